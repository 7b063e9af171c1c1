"""Run directories: each stage writes into its own, atomically.

A stage writes into a hidden staging folder beside the target and renames it into place only
when it has finished, with a ``DONE`` marker written last. A killed stage leaves no half-written
run directory behind; an existing run directory is never overwritten without ``overwrite``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
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
    parent = path.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise ClinicError(f"output directory {path} is not writable ({probe} is read-only)")
    return path


class RunDir:
    """``with RunDir(path) as run: run.path / "file"`` — written to staging, moved on success."""

    def __init__(self, path: str | Path, overwrite: bool = False):
        self.final = check_output_dir(path, overwrite)
        self.overwrite = overwrite
        self.path = self.final.parent / f".{self.final.name}.partial-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> RunDir:
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        (self.path / DONE).write_text("")
        if self.final.exists():
            if not self.overwrite:  # appeared while we ran
                shutil.rmtree(self.path, ignore_errors=True)
                raise ClinicError(f"output directory {self.final} appeared while the stage ran; result discarded")
            shutil.rmtree(self.final)
        self.path.rename(self.final)
        self.path = self.final

    # -- writers ---------------------------------------------------------------------------

    def write_json(self, name: str, data) -> Path:
        target = self.path / name
        target.write_text(json.dumps(_plain(data), indent=2, sort_keys=False) + "\n")
        return target

    def write_yaml(self, name: str, data) -> Path:
        target = self.path / name
        target.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
        return target

    def write_jsonl(self, name: str, rows) -> Path:
        target = self.path / name
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
