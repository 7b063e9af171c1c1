"""Training methods, one module each, registered by name.

Adding a method: write ``clinic/methods/<name>.py`` (config dataclass + trainer decorated with
``@register_method``) and add its module name to ``METHOD_MODULES`` below.
"""

import importlib

METHOD_MODULES = [
    "sft",
    "vaccine",
    "tvaccine",
    "repnoise",
    "booster",
    "tar",
    "surgery",
    "lisa",
]

_loaded = False


def load_all() -> None:
    """Import every method module so its ``@register_method`` runs."""
    global _loaded
    if not _loaded:
        for module in METHOD_MODULES:
            importlib.import_module(f"{__name__}.{module}")
        _loaded = True
