"""Where clinic finds data and keeps caches. Everything comes from the environment.

- ``CLINIC_DATA_DIR``: the data directory (the layout of ``../shared/data``). No other folder is
  searched: when it is unset there is no data directory. A named dataset it does not hold (every
  one, when it is unset) is read from the Hugging Face hub if the dataset has a hub id and the hub
  is not offline; otherwise it is an error.
- ``CLINIC_CACHE_DIR``: converted models and trained judges (default ``~/.cache/clinic``).
- ``HF_HUB_OFFLINE`` / ``CLINIC_OFFLINE``: never touch the Hugging Face hub.
- ``CLINIC_CHECKPOINT_MINUTES``: how often a training stage saves a checkpoint it can resume from
  when it is killed (default 10; 0: never). See :func:`checkpoint_minutes`.
- ``CLINIC_THREADS``: torch's CPU thread count. See :func:`torch_threads`.
- ``CLINIC_FLUSH_DENORMAL``: treat subnormal floats as zero on the CPU (default 1; 0: off). See
  :func:`flush_denormal`.

Also the defaults that every layer shares and that must be readable without importing torch
(:data:`LORA_TARGETS`).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from importlib import metadata
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


def flush_denormal() -> bool:
    """Whether clinic's commands make the CPU flush subnormal floats to zero (``CLINIC_FLUSH_DENORMAL``,
    default on; ``0``/``false``/``no`` turn it off).

    Why: a softmax over a 49k-token vocabulary leaves probabilities below float32's smallest normal
    number (1.2e-38) wherever the logits spread over more than 87 nats, and the matrix products of
    the backward that read them run one to two orders of magnitude slower on x86 (each subnormal
    operand takes a microcode assist): a RepNoise step on SmolLM2 took 43 s instead of 20 s
    (docs/benchmarks-alignment.md, ``benchmarks/denormals.py``). What it changes: any value of
    magnitude below 1.2e-38 counts as 0, so a sum of n such products moves by less than
    n * 1.2e-38 * max|operand|, some 1e-33 for a vocabulary projection: nothing a float32 training
    run can see (the measured gradients were bit-identical). Not a setting of a stage (no hash).
    """
    text = os.environ.get("CLINIC_FLUSH_DENORMAL", "").strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    from .errors import ClinicError

    raise ClinicError(f"CLINIC_FLUSH_DENORMAL must be 1 or 0, got {text!r}")


# The modules that get LoRA adapters unless told otherwise: the reference pipelines' seven
# projections (attention q/k/v/o, MLP gate/up/down). Defined here, not in models.py, because the
# CLI reads it while it builds its parsers, before torch is imported.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Commands that train or generate: the only ones whose speed depends on the torch thread count.
COMPUTE_COMMANDS = ("align", "finetune", "repair", "evaluate", "curate", "sink", "run", "demo")


def _cpu_times(stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat; None off Linux."""
    try:
        with open(stat) as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: the kernel already counts
    # guest time inside user and nice, so summing it too would count a VM host's guests twice
    total = sum(fields[:8])
    idle = fields[3] + fields[4]  # idle + iowait
    return total - idle, total


def busy_cores(cores: int, interval: float = 0.25, read=_cpu_times) -> float | None:
    """How many cores other processes keep busy *now*: the CPUs' busy share over ``interval``
    seconds (this process sleeps meanwhile), times ``cores``. None where /proc/stat is missing.
    Not the 1-minute load average: right after a finished job (``make demo``'s own install step)
    that still reads 1 or more for a minute on an idle machine."""
    import time

    first = read()
    if first is None:
        return None
    time.sleep(interval)
    second = read()
    if second is None or second[1] <= first[1]:
        return None
    return cores * (second[0] - first[0]) / (second[1] - first[1])


def torch_threads(cores: int | None = None, busy: float | None = None) -> tuple[int | None, str]:
    """The torch (OpenMP) thread count for this process, and why.

    ``CLINIC_THREADS`` wins; ``OMP_NUM_THREADS`` is left to torch, which reads it itself. Otherwise,
    when other processes keep cores busy (:func:`busy_cores`, rounded; the 1-minute load average
    where it cannot be measured), clinic uses only the free cores, at least one: OpenMP threads
    synchronise at every operation, so a thread sharing a core with another process makes all of
    them wait (on 2 shared cores, 2 threads were 5x slower than 1; docs/generation.md). On a quiet
    machine torch's own default stands. Returns ``(None, reason)`` when clinic leaves the count alone."""
    explicit = os.environ.get("CLINIC_THREADS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            from .errors import ClinicError

            raise ClinicError(f"CLINIC_THREADS must be a positive whole number, got {explicit!r}")
        return int(explicit), f"CLINIC_THREADS={explicit}"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None, "OMP_NUM_THREADS is set"
    allocated = cpu_allocation()
    if allocated is not None:  # a scheduler's allocation, not the node's load (other users' jobs share it)
        return allocated
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    if busy is None:
        busy = busy_cores(cores)
    if busy is None:
        busy = os.getloadavg()[0]
    taken = min(cores, int(busy + 0.5))
    if taken == 0:
        return None, "the machine is quiet"
    threads = max(1, cores - taken)
    return threads, (f"{busy:.1f} of {cores} cores busy with other processes: using {threads} torch thread(s) so "
                     f"that they do not wait on them (set CLINIC_THREADS to choose)")


# -- messages --------------------------------------------------------------------------------

LOGGER = logging.getLogger("clinic")


class _Console(logging.Handler):
    """clinic's messages on the console: progress and results (INFO, DEBUG) on stdout as they
    are, warnings on stderr as ``clinic: warning: ...``; the streams are looked up when a record
    is written, so a redirected ``sys.stdout`` (a test's capture, a notebook) receives them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"clinic: warning: {record.getMessage()}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(record.getMessage() + "\n")
                sys.stdout.flush()
        except Exception:  # noqa: BLE001  logging must never break a run
            self.handleError(record)


if not any(isinstance(h, _Console) for h in LOGGER.handlers):
    LOGGER.addHandler(_Console())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # one line per message, whatever the application configures at the root


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    """``--verbose``: debug messages too; ``--quiet``: warnings and errors only."""
    LOGGER.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def apply_cpu_math(say: bool = False) -> None:
    """Flush subnormal floats to zero (:func:`flush_denormal`), then set torch's thread count
    (:func:`torch_threads`). In this order and before any computation: the flag lives in each
    thread's floating-point control register, and OpenMP's worker threads copy the main thread's
    when they are created (at the first parallel operation), so a flag set later reaches the main
    thread only. Every process that computes calls it: a command, a cluster job. ``say``: one
    line on stderr when clinic chose fewer threads than torch would."""
    import torch

    if flush_denormal():
        torch.set_flush_denormal(True)  # False where the CPU cannot (no SSE3): nothing to do then
    threads, reason = torch_threads()
    if threads is not None and threads != torch.get_num_threads():
        if say and not os.environ.get("CLINIC_THREADS"):
            LOGGER.warning(reason)
        torch.set_num_threads(threads)


def cpu_allocation(environ=None, cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, str] | None:
    """The CPUs this process was given, when a scheduler or a container says: ``SLURM_CPUS_PER_TASK``
    (a SLURM job step), else the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), rounded down, at least 1. None when nothing limits it: then clinic
    reads the machine's load (:func:`torch_threads`)."""
    import math

    env = os.environ if environ is None else environ
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm), f"SLURM_CPUS_PER_TASK={slurm}: using {slurm} torch thread(s)"
    root = Path(cgroup_root)
    quota = period = None
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota, period = float(text[0]), float(text[1]) if len(text) > 1 else 100000.0
    except (OSError, ValueError, IndexError):
        try:
            quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
            if quota <= 0:
                quota = None
        except (OSError, ValueError):
            pass
    if quota is None or not period:
        return None
    cpus = max(1, math.floor(quota / period))
    return cpus, f"the cgroup's CPU quota is {quota / period:g} CPU(s): using {cpus} torch thread(s)"


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("clinic", "torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
