"""Where a stage computes, in which dtype its models are loaded, and how much memory it took.

``--device`` and the loading ``--dtype`` are execution settings: they never enter a stage's hash
(tests/test_device.py pins it). ``auto`` means CUDA, else MPS, else the CPU; bf16 where the device
computes it (a CUDA GPU with bf16), float32 elsewhere. Training precision is not this: it is the
hashed ``bf16`` training setting.
"""

from __future__ import annotations

import resource

import torch

from ..errors import ClinicError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# generation batch on an accelerator when none is asked: 64 prompts of 48-256 new tokens fit a
# 7B model in bf16 on one 80 GB GPU with room to spare (the CPU keeps the stage's own batch)
ACCELERATOR_BATCH = 64


def peak_memory_mb() -> float:
    """The process's peak memory: the GPU's allocator peak where there is one, else the CPU's
    resident set (KiB on Linux)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str | None = "auto") -> str:
    """``auto`` (or None) -> ``cuda``, else ``mps``, else ``cpu``; a device asked for that this
    machine lacks is a one-line error (``cuda:1`` names one GPU)."""
    name = (name or "auto").strip()
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ClinicError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ClinicError(f"--device {name}: no CUDA device is visible here (torch.cuda.is_available() is "
                              f"False); use --device cpu or auto")
        if ":" in name and int(name.split(":", 1)[1] or 0) >= torch.cuda.device_count():
            raise ClinicError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if kind == "mps" and not _mps():
        raise ClinicError(f"--device {name}: no Apple MPS device here; use --device cpu or auto")
    return name


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """The dtype models are loaded in: ``auto`` -> bf16 on a CUDA GPU that computes it, float32
    elsewhere (a CPU computes fp32 fastest unless it has AMX: docs/benchmarks-alignment.md)."""
    name = (name or "auto").strip()
    if name not in DTYPES:
        raise ClinicError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if name == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, name)


def generation_batch(device: str, stage_batch: int, asked: int | None = None) -> int:
    """Prompts per generation batch: the one asked for (``--generation-batch``), else the stage's
    own on the CPU and at least :data:`ACCELERATOR_BATCH` on an accelerator (batched greedy answers
    equal one-at-a-time ones up to near-ties: docs/generation.md)."""
    if asked is not None:
        if asked < 1:
            raise ClinicError(f"--generation-batch must be at least 1, got {asked}")
        return asked
    return stage_batch if device == "cpu" else max(stage_batch, ACCELERATOR_BATCH)


def placement(options: dict) -> tuple[str, torch.dtype]:
    """``(device, dtype)`` from a stage's execution options (``device``, ``dtype``)."""
    device = resolve_device(options.get("device"))
    return device, resolve_dtype(options.get("dtype"), device)
