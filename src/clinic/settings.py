"""Where clinic finds data and keeps caches. Everything comes from the environment.

- ``CLINIC_DATA_DIR``: the data directory (the layout of ``../shared/data``). No other folder is
  searched: when it is unset there is no data directory. A named dataset it does not hold (every
  one, when it is unset) is read from the Hugging Face hub if the dataset has a hub id and the hub
  is not offline; otherwise it is an error.
- ``CLINIC_CACHE_DIR``: converted models and trained judges (default ``~/.cache/clinic``).
- ``HF_HUB_OFFLINE`` / ``CLINIC_OFFLINE``: never touch the Hugging Face hub.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    """The configured data directory, or ``None`` when there is none."""
    value = os.environ.get("CLINIC_DATA_DIR")
    if value:
        return Path(value).expanduser()
    return None


def cache_dir() -> Path:
    path = Path(os.environ.get("CLINIC_CACHE_DIR", Path.home() / ".cache" / "clinic")).expanduser()
    return path


def offline() -> bool:
    """True when the hub must not be contacted."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "CLINIC_OFFLINE"))
