"""What every benchmark records beside its figures: the machine, the device and the versions.

Imported as ``from _common import machine_info`` (a benchmark's own folder is on ``sys.path``
when it runs as ``python benchmarks/NAME.py``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path


def cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (``model name``, ``flags``); None
    where the field or the file (not Linux) is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def machine_info(device: str | None = None, **extra) -> dict:
    """Platform, CPU, thread count, library versions, the device (``cuda``/``cpu``; detected when
    None) with the GPU's name and memory, and the load average when the benchmark started (timings
    on a shared CPU drift with it). ``extra`` entries are added as given."""
    import torch
    import transformers

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    info.update(extra)
    return info


def save_json(result: dict, path, quiet: bool = False) -> Path:
    """Write a benchmark's results as indented JSON (creating the folder) and say where (unless
    ``quiet``: partial results rewritten as a run goes)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if not quiet:
        print(f"saved {path}")
    return path


def clinic_align(options: list[str], out: Path, env: dict | None = None, what: str = "clinic align") -> dict:
    """Run ``clinic align OPTIONS --output OUT`` in a fresh process (``env`` added to this one's) and
    return its metrics.json; a failure is a one-line ``SystemExit`` naming ``what``."""
    import json
    import subprocess

    command = [sys.executable, "-m", "clinic.cli", "align", *options, "--output", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"{what} failed: {tail[0]}")
    return json.loads((Path(out) / "metrics.json").read_text())


@contextlib.contextmanager
def one_line_errors(prog: str):
    """A table script's refusal (``SystemExit("why")``) as the command line wants it: one line,
    ``PROG: error: why``, exit status 2 (argparse's own errors already are)."""
    try:
        yield
    except SystemExit as error:
        if isinstance(error.code, str):
            print(f"{prog}: error: {error.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
