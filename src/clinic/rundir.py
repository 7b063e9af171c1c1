"""Run directories: each stage writes into its own, atomically.

A stage writes into a hidden staging folder beside the target and renames it into place only
when it has finished, with a ``DONE`` marker written last. A killed stage leaves no half-written
run directory behind; an existing run directory is never overwritten without ``overwrite``.

Under several processes (``accelerate launch``, torchrun; the process group must be up before
the run directory is opened) every process uses the main process's staging folder, only the main
process writes the stage's files, and it moves the folder into place once every process is done.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path

import yaml

from .errors import ClinicError

RUN_RECORD = "run.json"
DONE = "DONE"
# Written first into every folder clinic creates (a stage's staging folder, the demo and the
# experiment directory): ``--overwrite`` replaces only a folder that holds it (or, for runs written
# before the marker existed, a DONE marker), never a user's own folder. It also records which
# process writes a staging folder, so that a stale one (its process gone) can be told apart.
MARKER = "clinic.json"
_STAGING = re.compile(r"^\.(?P<name>.+)\.partial-[0-9a-f]{8}$")


def check_output_dir(path: str | Path, overwrite: bool, inputs: tuple = ()) -> Path:
    """Validate an output directory before any work starts.

    An existing output is replaced (``overwrite``) only when clinic wrote it (see :data:`MARKER`),
    and an output that is or holds one of ``inputs`` (the folders the stage reads its model or
    data from) is refused: replacing it would destroy what the stage is built from. An output
    inside an input is allowed (an experiment's report)."""
    path = Path(path).expanduser().resolve()
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ClinicError(f"output directory {path} already exists (pass --overwrite to replace it)")
        if not path.is_dir():
            raise ClinicError(f"output {path} is a file, not a run directory; choose another --output")
        if not is_clinic_dir(path):
            raise ClinicError(f"output directory {path} was not written by clinic (no {MARKER}); --overwrite "
                              f"replaces only clinic run directories: remove it yourself or choose another --output")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if path == source or path in source.parents:
            raise ClinicError(f"output directory {path} is or holds the input {source}, which the stage reads; "
                              f"choose another --output")
    check_writable(path.parent, path)
    return path


def is_clinic_dir(path: str | Path) -> bool:
    """Whether clinic wrote the folder ``path``: its marker, or what runs and demos wrote before
    the marker existed (a run's DONE, a demo's demo.json with its demo_table.md)."""
    path = Path(path)
    legacy = (path / DONE).is_file() or ((path / "demo.json").is_file() and (path / "demo_table.md").is_file())
    return path.is_dir() and ((path / MARKER).is_file() or legacy)


def write_marker(folder: Path, kind: str) -> None:
    """The :data:`MARKER` of a folder clinic is about to fill (written before anything else)."""
    from . import __version__

    (folder / MARKER).write_text(json.dumps({"written_by": "clinic", "version": __version__, "kind": kind,
                                             "pid": os.getpid(), "host": socket.gethostname(),
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def is_staging_dir(path: str | Path) -> bool:
    """Whether ``path`` is a stage's hidden staging folder (``.<name>.partial-<id>``)."""
    return bool(_STAGING.match(Path(path).name))


def stale_partials(final: Path, any_host: bool = False) -> list[Path]:
    """The staging folders of ``final`` left by a stopped process (SIGTERM, kill -9): those whose
    marker names a process of this host that no longer runs, or that an interrupted run marked as
    stopped (``keep_on_interrupt``). A staging folder of a live process, of another host or without
    a marker is not stale, unless ``any_host``: the caller holds the stage's lock, so no process
    anywhere writes a staging folder of it (a requeued cluster job lands on another node). Newest first."""
    stale = []
    for path in final.parent.glob(f".{glob.escape(final.name)}.partial-*"):
        if not is_staging_dir(path) or not path.is_dir():
            continue
        try:
            owner = json.loads((path / MARKER).read_text())
            pid, host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname():
            if any_host:
                stale.append(path)
            continue
        if owner.get("stopped") or (pid != os.getpid() and not pid_alive(pid)):
            stale.append(path)
    return sorted(stale, key=lambda p: p.stat().st_mtime, reverse=True)


def clear_stale_partials(final: Path, any_host: bool = False) -> list[Path]:
    """Remove the stale staging folders of ``final`` (:func:`stale_partials`); returns them."""
    removed = stale_partials(final, any_host)
    for stale in removed:
        shutil.rmtree(stale, ignore_errors=True)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


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
    skipped (only the main process writes files).

    ``adopt(stale)``, when given, is asked about each staging folder a stopped run of the same
    target left behind (newest first): the first it accepts becomes this run's staging folder
    (``run.adopted`` names where it came from), so a training stage can resume from the
    checkpoints in it; the rest are removed as usual. Single-process runs only.
    ``keep_on_interrupt(path)``: when the run is interrupted (Ctrl-C) and this says yes, its staging
    folder is kept, marked as stopped, for a later run to adopt (any other error removes it)."""

    def __init__(self, path: str | Path, overwrite: bool = False, inputs: tuple = (), adopt=None,
                 keep_on_interrupt=None, checked: bool = False, lock_held: bool = False):
        # checked: the caller (clinic.stages.execute) checked the output already, before its own checks
        self.final = Path(path).expanduser().resolve() if checked else check_output_dir(path, overwrite, inputs)
        self.overwrite = overwrite
        self.adopt = adopt
        self.keep_on_interrupt = keep_on_interrupt
        self.lock_held = lock_held  # the stage's lock is ours: any host's staging folder of it is stale
        self.adopted: Path | None = None
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
        if self.is_main and self.adopt is not None and self.group is None:
            for stale in stale_partials(self.final, self.lock_held):
                if not self.adopt(stale):
                    continue
                try:
                    stale.rename(self.path)  # atomic: of two runs adopting it at once, one gets it
                except OSError:
                    continue
                self.adopted = stale
                write_marker(self.path, "run")  # now this process's
                break
        if self.is_main:
            for stale in clear_stale_partials(self.final, self.lock_held):
                logging.getLogger("clinic").warning(f"removed {stale}, the staging folder of a stopped run of "
                                                    f"{self.final.name}")
            try:
                if self.adopted is None:
                    self.path.mkdir(parents=True)
                    write_marker(self.path, "run")
            except OSError as exc:
                error = f"cannot create the run directory {self.final}: {exc.strerror or exc}"
        error = self._agree(error)
        if error:
            raise ClinicError(error)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if not self.is_main:
                return
            # Ctrl-C, or a scheduler's signal turned into SystemExit (a preempted cluster job)
            if (issubclass(exc_type, (KeyboardInterrupt, SystemExit)) and self.group is None
                    and self.keep_on_interrupt is not None
                    and self.keep_on_interrupt(self.path)):
                marker = json.loads((self.path / MARKER).read_text())
                (self.path / MARKER).write_text(json.dumps({**marker, "stopped": True}) + "\n")
                logging.getLogger("clinic").warning(f"interrupted; {self.path.name} is kept, and the next run of "
                                                    f"{self.final.name} resumes from its checkpoint")
                return
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
            if not self.overwrite or not is_clinic_dir(self.final):  # appeared while we ran
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
        target.write_text(json.dumps(plain(data), indent=2, sort_keys=False) + "\n")
        return target

    def write_yaml(self, name: str, data) -> Path:
        target = self.path / name
        if not self.is_main:
            return target
        target.write_text(yaml.safe_dump(plain(data), sort_keys=False))
        return target

    def write_jsonl(self, name: str, rows) -> Path:
        target = self.path / name
        if not self.is_main:
            return target
        with target.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(plain(row)) + "\n")
        return target


def plain(data):
    """``data`` as the writers store it: dataclasses as dicts, keys as text, tuples as lists."""
    if is_dataclass(data) and not isinstance(data, type):
        return plain(asdict(data))
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(v) for v in data]
    if isinstance(data, Path):
        return str(data)
    return data


def read_run(path: str | Path) -> dict:
    """The record of a finished run directory (a one-line error for anything else)."""
    path = Path(path)
    record = path / RUN_RECORD
    if is_staging_dir(path):
        raise ClinicError(f"{path} is the staging folder of a stage that did not finish (incomplete run)")
    if not record.exists():
        raise ClinicError(f"{path} is not a clinic run directory ({RUN_RECORD} missing)")
    if not (path / DONE).exists():
        raise ClinicError(f"run directory {path} is incomplete (no {DONE} marker)")
    return read_json(record)


def jsonl_file(folder: str | Path, name: str) -> Path | None:
    """``folder/name``, else its gzip copy ``folder/name.gz`` (an exported results folder keeps its
    per-prompt files compressed, ~4x smaller, as they travel with every clone), else None."""
    for path in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if path.exists():
            return path
    return None


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file, plain or gzip-compressed (by its ``.gz`` name)."""
    path = Path(path)
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_jsonl_atomic(path: str | Path, rows) -> Path:
    """Rows as JSON lines, gzip-compressed when the name ends in ``.gz`` (no timestamp inside, so
    equal rows give equal bytes and git sees no change), replacing ``path`` in one rename."""
    path = Path(path)
    data = "".join(json.dumps(plain(row)) + "\n" for row in rows).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> dict:
    """A JSON object from a file of a run or experiment directory; one line naming the file when
    it cannot be read (a hand edit, a full disk, a copy cut short)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ClinicError(f"{path} cannot be read: {_reason(exc)}") from None
    if not isinstance(data, dict):
        raise ClinicError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno} ({exc.msg})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_RECORD).exists()


def is_incomplete_run(path: str | Path) -> bool:
    """A folder clinic began to write but did not finish (a staging folder, or a marker without DONE)."""
    path = Path(path)
    return path.is_dir() and (is_staging_dir(path) or ((path / MARKER).exists() and not (path / DONE).exists()))


def followed_path(run_dir: Path, stored: str) -> Path:
    """The path ``stored`` in ``run_dir``'s record (relative ones are relative to the run)."""
    stored_p = Path(stored)
    return stored_p if stored_p.is_absolute() else Path(run_dir) / stored_p


def read_metrics(run_dir: str | Path) -> dict:
    """A finished stage's ``metrics.json``."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def load_plan(root: str | Path) -> tuple[dict, Path]:
    """The plan of an experiment directory (written by :mod:`clinic.experiment`) and its stage
    store; read by the report, which must not import the runner."""
    root = Path(root)
    plan_file = root / "plan.json"
    if not plan_file.exists():
        raise ClinicError(f"{root} is not an experiment directory (plan.json missing; run `clinic run` first)")
    plan = read_json(plan_file)
    if not isinstance(plan.get("store"), str) or not isinstance(plan.get("stages"), list):
        raise ClinicError(f"{plan_file} is not a clinic plan (no store or stages)")
    return plan, (root / plan["store"]).resolve()
