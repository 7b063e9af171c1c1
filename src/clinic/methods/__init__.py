"""Training methods, one module each, registered by name.

Adding a method: write ``clinic/methods/<name>.py`` (a config dataclass + a trainer decorated with
``@register_method``); the registry (:data:`clinic.methods.registry.METHODS`) imports every module
of this package on its first look-up, so the new file is all there is to it (docs/contributing.md).

- :mod:`.config`: the training settings, the presets, the method-config bases;
- :mod:`.registry`: the method registry;
- :mod:`.trainer`: :class:`~.trainer.ClinicTrainer`, which every method extends;
- :mod:`.shared`: gradient helpers several methods use.
"""
