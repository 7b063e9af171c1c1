"""The wheels of the GPU check, and the checks that its imports will be there on the device.

The device machine (one H200, CPython 3.12) has torch, transformers, peft and accelerate but not
trl, datasets or clinic, and reaches no registry. ``benchmarks/gpu_wheels.txt`` lists the wheels
that travel in ``.whl/`` and when each is installed. Subcommands:

- ``download``: re-create ``.whl/`` (for CPython 3.12 x86-64) and ``.whl-dryrun/`` here with pip;
- ``install --target DIR [--dry-run]``: choose the wheels (``always`` ones, ``ifneed`` ones whose
  package is missing here or fails its requirement; in a dry run also the ``dryrun`` ones, and a
  wheel this Python cannot install is replaced by this Python's own copy of the same package,
  checked against the requirement) and hand them to ``pip install --no-index --no-deps --target``;
  ``--import-log DIR`` also writes a ``sitecustomize.py`` into the target that records, at the
  exit of every Python process started with the target on ``PYTHONPATH``, the top-level modules
  it imported;
- ``preflight --out FILE``: versions and origins of the stack, CUDA, and the imports of every
  clinic module the check runs (written as JSON; exit 1 if one fails);
- ``audit --import-log DIR --out FILE``: map the recorded modules to their distributions and
  report any that is neither on the device image (``gpu_device_packages.txt``) nor carried.

Run from the repository root: ``python benchmarks/gpu_prepare.py SUBCOMMAND ...``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
WHEELS = Path(__file__).with_name("gpu_wheels.txt")
DEVICE_PACKAGES = Path(__file__).with_name("gpu_device_packages.txt")
CARRY_DIR, DRYRUN_DIR = ".whl", ".whl-dryrun"
# pip download's platform tags for the device: x86-64 Linux, glibc new enough for all of them
DEVICE_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64"]
# every clinic module the check imports on the device (the CLI imports the rest lazily)
CLINIC_MODULES = ["clinic.cli", "clinic.stages.train", "clinic.stages.evaluate", "clinic.stages.export",
                  "clinic.experiment.executors", "clinic.modeling.attention", "clinic.sink", "clinic.modeling.models",
                  "clinic.methods.trainer", "clinic.evaluation.judges", "clinic.evaluation.generate"]
STACK = ["torch", "transformers", "trl", "datasets", "peft", "accelerate", "huggingface_hub", "tokenizers",
         "safetensors", "pyarrow", "fsspec", "dill", "multiprocess", "numpy", "pandas"]
# top-level modules that belong to no installed distribution but are expected
LOCAL_MODULES = {"clinic", "_common", "sitecustomize", "__main__", "__mp_main__", "alignment_cost", "surgery_cost",
                 "gpu_prepare", "gpu_sink_check", "gpu_smoke", "gpu_summary"}


def read_wheels() -> list[dict]:
    rows = []
    for line in WHEELS.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        wheel, rule, requirement, size, *why = line.split()
        name, version, _, tags = parse_wheel_filename(wheel)
        rows.append({"wheel": wheel, "rule": rule, "requirement": Requirement(requirement), "bytes": int(size),
                     "name": str(name), "version": str(version), "tags": tags, "why": " ".join(why)})
    return rows


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfied(row: dict) -> tuple[bool, str | None]:
    version = installed_version(row["name"])
    return version is not None and row["requirement"].specifier.contains(version, prereleases=True), version


def download(args) -> int:
    for row in read_wheels():
        folder = ROOT / (DRYRUN_DIR if row["rule"] == "dryrun" else CARRY_DIR)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
               f"{row['name']}=={row['version']}"]
        if row["rule"] != "dryrun":
            cmd[5:5] = ["--python-version", "3.12", "--implementation", "cp",
                        *[x for p in DEVICE_PLATFORMS for x in ("--platform", p)]]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
        path = folder / row["wheel"]
        if not path.is_file():
            sys.exit(f"gpu_prepare: error: pip saved no {path.name} (check the name in {WHEELS.name})")
        if path.stat().st_size != row["bytes"]:
            print(f"  note: {path.name} is {path.stat().st_size} bytes, {WHEELS.name} says {row['bytes']}")
    return 0


_SITECUSTOMIZE = '''"""Written by gpu_prepare.py install --import-log: record the top-level modules this process imported."""
import atexit, os, sys


def _record_imports():
    with open(os.path.join({log!r}, "%d.txt" % os.getpid()), "w") as fh:
        fh.write("\\n".join(sorted({{m.split(".")[0] for m in list(sys.modules)}})))


atexit.register(_record_imports)
'''


def choose(rows: list[dict], dry_run: bool, own_tags: set) -> tuple[list[Path] | None, list[str]]:
    """(wheel paths to install, one note per package), or (None, notes) when the rehearsal cannot
    stand in for a wheel this Python cannot install."""
    chosen, notes = [], []
    for row in rows:
        if row["rule"] == "dryrun" and not dry_run:
            continue
        ok, version = satisfied(row)
        if row["rule"] == "ifneed" and ok:
            notes.append(f"{row['name']}: keeping the installed {version} ({row['requirement']})")
            continue
        if dry_run and not (row["tags"] & own_tags):
            # e.g. pyarrow's cp312 build on this 3.11: the rehearsal uses this Python's own copy
            if not ok:
                notes.append(f"{row['wheel']} does not install on this Python and the installed "
                             f"{row['name']} ({version}) fails {row['requirement']}")
                return None, notes
            notes.append(f"{row['name']}: {row['wheel']} is not for this Python; dry run uses the installed {version}")
            continue
        chosen.append(ROOT / (DRYRUN_DIR if row["rule"] == "dryrun" else CARRY_DIR) / row["wheel"])
        notes.append(f"{row['name']}: installing {row['version']} ({row['rule']}; found {version or 'none'})")
    return chosen, notes


def install(args) -> int:
    chosen, notes = choose(read_wheels(), args.dry_run, set(sys_tags()))
    if chosen is None:
        print(f"gpu_prepare: error: {notes[-1]}", file=sys.stderr)
        return 1
    print("\n".join(notes), flush=True)
    missing = [p for p in chosen if not p.is_file()]
    if missing:
        print(f"gpu_prepare: error: {missing[0]} is missing (python benchmarks/gpu_prepare.py download)", file=sys.stderr)
        return 1
    target = Path(args.target)
    target.mkdir(parents=True, exist_ok=True)
    if chosen:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, chosen)], check=True)
    if args.import_log:
        Path(args.import_log).mkdir(parents=True, exist_ok=True)
        (target / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(log=str(Path(args.import_log).resolve())))
    return 0


def _origin(module) -> str:
    path = getattr(module, "__file__", None) or ""
    return str(Path(path).parent)


def preflight(args) -> int:
    report: dict = {"python": sys.version.split()[0], "executable": sys.executable, "packages": {}, "imports": {}}
    failed = False
    for name in STACK:
        try:
            module = importlib.import_module(name)
            report["packages"][name] = {"version": installed_version(name) or getattr(module, "__version__", None),
                                        "from": _origin(module)}
        except Exception as exc:  # noqa: BLE001  a broken package fails in many ways; record the line
            report["packages"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
    for name in CLINIC_MODULES:
        try:
            importlib.import_module(name)
            report["imports"][name] = "ok"
        except Exception as exc:  # noqa: BLE001
            report["imports"][name] = f"{type(exc).__name__}: {exc}"
            failed = True
    try:
        from clinic.methods.registry import METHODS

        METHODS.discover()
        report["imports"]["clinic.methods (all)"] = "ok"
    except Exception as exc:  # noqa: BLE001
        report["imports"]["clinic.methods (all)"] = f"{type(exc).__name__}: {exc}"
        failed = True
    import torch

    report["cuda"] = torch.cuda.is_available()
    if report["cuda"]:
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                         "capability": list(torch.cuda.get_device_capability(0)), "cuda": torch.version.cuda,
                         "bf16": torch.cuda.is_bf16_supported()}
    for name, entry in report["packages"].items():
        print(f"{name:16s} {entry.get('version', entry.get('error'))}  {entry.get('from', '')}")
    for name, status in report["imports"].items():
        print(f"import {name:28s} {status}")
    print("cuda:", report.get("gpu", report["cuda"]), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


def audit(args) -> int:
    modules = set()
    for path in Path(args.import_log).glob("*.txt"):
        modules.update(path.read_text().split())
    owners = importlib.metadata.packages_distributions()
    device = {canonicalize_name(x.strip()) for x in DEVICE_PACKAGES.read_text().splitlines()
              if x.strip() and not x.startswith("#")}
    carried = {canonicalize_name(r["name"]) for r in read_wheels() if r["rule"] != "dryrun"}
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    distributions: dict[str, list[str]] = {}
    unknown = []
    for module in sorted(modules):
        if module in stdlib or module in LOCAL_MODULES:
            continue
        dists = owners.get(module)
        if not dists:
            # Cython's runtime and compiled helpers register private top-level names (_cython_3_2_4,
            # scipy's _csparsetools, _sysconfigdata_...): they come with their package, not alone
            if not (module.startswith("_") or module == "cython_runtime"):
                unknown.append(module)
            continue
        for dist in dists:
            distributions.setdefault(canonicalize_name(dist), []).append(module)
    missing = sorted(d for d in distributions if d not in device and d not in carried)
    report = {"processes": len(list(Path(args.import_log).glob("*.txt"))), "modules": len(modules),
              "distributions": {d: sorted(set(m)) for d, m in sorted(distributions.items())},
              "carried_used": sorted(d for d in distributions if d in carried),
              "missing_on_device": {d: distributions[d] for d in missing}, "unknown_modules": unknown}
    print(f"import audit: {report['processes']} processes, {len(distributions)} distributions imported; "
          f"carried and used: {', '.join(report['carried_used']) or 'none'}; "
          f"missing on the device: {', '.join(missing) or 'none'}; unmapped modules: {', '.join(unknown) or 'none'}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if missing or unknown else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("download", help="re-create .whl/ and .whl-dryrun/ with pip download")
    p = sub.add_parser("install", help="install the needed wheels into a --target folder")
    p.add_argument("--target", required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU rehearsal: also the dryrun wheels")
    p.add_argument("--import-log", help="folder where every Python process records its imports")
    p = sub.add_parser("preflight", help="versions, CUDA and clinic's imports, as JSON")
    p.add_argument("--out", required=True)
    p = sub.add_parser("audit", help="check recorded imports against the device image and the wheels")
    p.add_argument("--import-log", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return {"download": download, "install": install, "preflight": preflight, "audit": audit}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
