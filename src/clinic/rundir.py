"""Run directories: each stage writes into its own, atomically.

A stage writes into a hidden staging folder beside the target and renames it into place only
when it has finished, with a ``DONE`` marker written last. A killed stage leaves no half-written
run directory behind; an existing run directory is never overwritten without ``overwrite``.

Under several processes (``accelerate launch``, torchrun; the process group must be up before
the run directory is opened) every process uses the main process's staging folder, only the main
process writes the stage's files, and it moves the folder into place once every process is done.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path

import yaml

from .errors import ClinicError

RUN_RECORD = "run.json"
DONE = "DONE"


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("clinic", "torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Validate an output directory before any work starts."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise ClinicError(f"output directory {path} already exists (pass --overwrite to replace it)")
    check_writable(path.parent, path)
    return path


def check_writable(folder: Path, target: Path) -> None:
    """Raise unless files can be created in ``folder`` (or the folders leading to it): its
    nearest existing ancestor must be a writable folder. ``target`` names it in the message."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ClinicError(f"output directory {target} cannot be created ({probe} is a file)")
    if not os.access(probe, os.W_OK) or not _can_create_in(probe):
        raise ClinicError(f"output directory {target} is not writable ({probe} is read-only)")


def _can_create_in(folder: Path) -> bool:
    """Whether a folder can really be created in ``folder`` (``os.access`` says yes to root even
    on read-only file systems); the probe folder is removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".clinic-probe-", dir=folder))
    except OSError:
        return False
    return True


def _process_group():
    """``torch.distributed`` when several processes run this stage together, else ``None``."""
    torch = sys.modules.get("torch")  # no torch imported: no process group either
    if torch is None:
        return None
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class RunDir:
    """``with RunDir(path) as run: run.path / "file"`` — written to staging, moved on success.

    ``run.is_main`` is false on the other processes of a multi-process stage: their writes are
    skipped (only the main process writes files)."""

    def __init__(self, path: str | Path, overwrite: bool = False):
        self.final = check_output_dir(path, overwrite)
        self.overwrite = overwrite
        self.group = _process_group()
        self.is_main = self.group is None or self.group.get_rank() == 0
        # the main process's staging folder everywhere
        self.path = self.final.parent / self._agree(f".{self.final.name}.partial-{uuid.uuid4().hex[:8]}")

    def _agree(self, value):
        """``value`` as the main process has it, on every process."""
        if self.group is None:
            return value
        box = [value]
        self.group.broadcast_object_list(box, src=0)
        return box[0]

    def __enter__(self) -> RunDir:
        error = None
        if self.is_main:
            try:
                self.path.mkdir(parents=True)
            except OSError as exc:
                error = f"cannot create the run directory {self.final}: {exc.strerror or exc}"
        error = self._agree(error)
        if error:
            raise ClinicError(error)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.is_main:
                shutil.rmtree(self.path, ignore_errors=True)
            return
        if self.group is not None:
            self.group.barrier()  # every process has finished writing (checkpoints)
        error = self._finish() if self.is_main else None
        error = self._agree(error)
        if error:
            raise ClinicError(error)
        self.path = self.final

    def _finish(self) -> str | None:
        (self.path / DONE).write_text("")
        if self.final.exists():
            if not self.overwrite:  # appeared while we ran
                shutil.rmtree(self.path, ignore_errors=True)
                return f"output directory {self.final} appeared while the stage ran; result discarded"
            shutil.rmtree(self.final)
        self.path.rename(self.final)
        return None

    # -- writers (the main process only) ---------------------------------------------------

    def write_json(self, name: str, data) -> Path:
        target = self.path / name
        if not self.is_main:
            return target
        target.write_text(json.dumps(_plain(data), indent=2, sort_keys=False) + "\n")
        return target

    def write_yaml(self, name: str, data) -> Path:
        target = self.path / name
        if not self.is_main:
            return target
        target.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
        return target

    def write_jsonl(self, name: str, rows) -> Path:
        target = self.path / name
        if not self.is_main:
            return target
        with target.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(_plain(row)) + "\n")
        return target


def _plain(data):
    if is_dataclass(data) and not isinstance(data, type):
        return _plain(asdict(data))
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    if isinstance(data, Path):
        return str(data)
    return data


def read_run(path: str | Path) -> dict:
    """The record of a finished run directory."""
    path = Path(path)
    record = path / RUN_RECORD
    if not record.exists():
        raise ClinicError(f"{path} is not a clinic run directory ({RUN_RECORD} missing)")
    if not (path / DONE).exists():
        raise ClinicError(f"run directory {path} is incomplete (no {DONE} marker)")
    return json.loads(record.read_text())


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_RECORD).exists()
