"""Where clinic finds data and keeps caches. Everything comes from the environment.

- ``CLINIC_DATA_DIR``: the data directory (the layout of ``../shared/data``). No other folder is
  searched: when it is unset there is no data directory. A named dataset it does not hold (every
  one, when it is unset) is read from the Hugging Face hub if the dataset has a hub id and the hub
  is not offline; otherwise it is an error.
- ``CLINIC_CACHE_DIR``: converted models and trained judges (default ``~/.cache/clinic``).
- ``HF_HUB_OFFLINE`` / ``CLINIC_OFFLINE``: never touch the Hugging Face hub.
- ``CLINIC_CHECKPOINT_MINUTES``: how often a training stage saves a checkpoint it can resume from
  when it is killed (default 10; 0: never). See :func:`checkpoint_minutes`.

Also the defaults that every layer shares and that must be readable without importing torch
(:data:`LORA_TARGETS`).
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


# The modules that get LoRA adapters unless told otherwise: the reference pipelines' seven
# projections (attention q/k/v/o, MLP gate/up/down). Defined here, not in models.py, because the
CHECKPOINT_MINUTES = 10.0


def checkpoint_minutes() -> float:
    """Minutes between the resumable checkpoints of a training stage (``CLINIC_CHECKPOINT_MINUTES``,
    default :data:`CHECKPOINT_MINUTES`; 0 turns them off). A killed stage's next run resumes from
    its newest one instead of step 0 (:mod:`clinic.methods.checkpoints`). Not a setting of the stage:
    it does not change what is trained, so it is not part of any stage's hash."""
    text = os.environ.get("CLINIC_CHECKPOINT_MINUTES", "").strip()
    if not text:
        return CHECKPOINT_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        from .errors import ClinicError

        raise ClinicError(f"CLINIC_CHECKPOINT_MINUTES must be a number of minutes >= 0, got {text!r}")
    return value


# CLI reads it while it builds its parsers, before torch is imported.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Commands that train or generate: the only ones whose speed depends on the torch thread count.
COMPUTE_COMMANDS = ("align", "finetune", "repair", "evaluate", "curate", "sink", "run", "demo")


def torch_threads(cores: int | None = None, load: float | None = None) -> tuple[int | None, str]:
    """The torch (OpenMP) thread count for this process, and why.

    ``CLINIC_THREADS`` wins; ``OMP_NUM_THREADS`` is left to torch, which reads it itself. Otherwise,
    when other processes keep cores busy (the 1-minute load average, rounded, counts them), clinic
    uses only the free cores, at least one: OpenMP threads synchronise at every operation, so a
    thread sharing a core with another process makes all of them wait (on 2 shared cores, 2 threads
    were 5x slower than 1; docs/generation.md). On a quiet machine torch's own default stands.
    Returns ``(None, reason)`` when clinic leaves the count alone."""
    explicit = os.environ.get("CLINIC_THREADS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            from .errors import ClinicError

            raise ClinicError(f"CLINIC_THREADS must be a positive whole number, got {explicit!r}")
        return int(explicit), f"CLINIC_THREADS={explicit}"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None, "OMP_NUM_THREADS is set"
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    load = load if load is not None else os.getloadavg()[0]
    busy = min(cores, int(load + 0.5))
    if busy == 0:
        return None, "the machine is quiet"
    threads = max(1, cores - busy)
    return threads, (f"load average {load:.1f} on {cores} cores: using {threads} torch thread(s) so that they do "
                     f"not wait on other processes (set CLINIC_THREADS to choose)")
