"""Shared loading of the model-based judges' weights (``beaverdam``, ``llamaguard``): a local
directory or a hub id, and one-line errors that say what to download when neither loads."""

from __future__ import annotations

from pathlib import Path

from ...errors import ClinicError
from ...settings import offline


def _local_or_hub(model_path: str, judge: str, hub_id: str) -> str:
    path = Path(model_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ClinicError(f"{judge} judge: {path} has no config.json (expected a saved model directory)")
        return str(path)
    if offline() or model_path.startswith(("/", "./", "../", "~")):
        raise ClinicError(
            f"{judge} judge: model weights not found at {model_path!r} and the hub is offline; "
            f"download {hub_id} where the hub is reachable and pass model_path=<local directory>"
        )
    return model_path


def _load_error(judge: str, model_path: str, hub_id: str, exc: Exception) -> ClinicError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ClinicError(
        f"{judge} judge: cannot load model weights from {model_path!r} ({first}); "
        f"download {hub_id} and pass model_path=<local directory>"
    )


def _torch_dtype(dtype):
    import torch

    return getattr(torch, dtype) if isinstance(dtype, str) else dtype
