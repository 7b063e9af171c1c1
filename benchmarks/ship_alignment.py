"""Ship the calibrated protocol's SFT alignment of SmolLM2-135M-Instruct with clinic, for ``clinic demo``.

The protocol's alignment (cell B of docs/protocol.md: 1,024 refusals + 512 Alpaca rows, 2 epochs,
384 LoRA steps) is what makes benign fine-tuning keep the alignment, and it takes 25 minutes on two
cores: more than the demo's 15-minute budget. So the demo loads it from the package instead of
training it (``clinic demo --alignment train`` trains it). This script copies a finished alignment
stage into ``src/clinic/assets/smollm2-protocol-aligned/``: its record (``config.yaml``,
``run.json``, ``metrics.json``, ``data_indices.json``) and its LoRA adapter *packed* to fit a file
tracked in the repository (≤ 2 MiB; the float16 adapter is 4.7 MiB): a budgeted SVD of every
module's update with int8 factors (:mod:`clinic.modeling.lora_pack`; the relative error of every
module is written down), plus ``shipped.json``:

    python benchmarks/ship_alignment.py runs/store/align-sft-7213ccb9c0eb \\
        --evaluation results/shipped-alignment/eval-aligned

The packing is lossy, so the record quotes the evaluation of the *packed* model (``--evaluation``:
an evaluate run of the materialised shipped alignment; ``clinic evaluate --model`` on the folder
``clinic.experiment.demo.materialise_shipped_alignment`` writes); docs/protocol.md compares it with the
source stage's.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "src" / "clinic" / "assets" / "smollm2-protocol-aligned"
RECORD_FILES = ("config.yaml", "run.json", "metrics.json", "data_indices.json")
FILE_LIMIT = 2 * 2**20  # no tracked file above 2 MiB
FACTOR_BUDGET = 1_960_000  # int8 factor bytes; scales and the header (~100 kB) come on top


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship(stage: Path, out: Path, evaluation: Path | None = None, budget: int = FACTOR_BUDGET) -> dict:
    import collections

    import yaml

    from clinic.experiment.demo import SHIPPED_ADAPTER as PACKED  # the file name the demo loads
    from clinic.modeling.lora_pack import pack_lora

    if not (stage / "DONE").exists() or not (stage / "adapter" / "adapter_model.safetensors").exists():
        sys.exit(f"ship_alignment: error: {stage} is not a finished alignment stage with an adapter")
    config = yaml.safe_load((stage / "config.yaml").read_text())
    if config.get("stage") != "align":
        sys.exit(f"ship_alignment: error: {stage} is a {config.get('stage')} stage, not an alignment")
    if evaluation is not None and not (evaluation / "metrics.json").exists():
        sys.exit(f"ship_alignment: error: {evaluation} is not a finished evaluation (no metrics.json)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copy2(stage / name, tmp / name)
    source = stage / "adapter" / "adapter_model.safetensors"
    packing = pack_lora(stage / "adapter", tmp / PACKED, budget)
    if packing["file_bytes"] > FILE_LIMIT:
        shutil.rmtree(tmp)
        sys.exit(f"ship_alignment: error: the packed adapter is {packing['file_bytes']} bytes, over the "
                 f"{FILE_LIMIT}-byte limit of a tracked file: lower --budget")
    record = {
        "what": "the SFT alignment of cell B of docs/protocol.md (configs/protocol-smollm2.yaml, seed 0)",
        "source_stage": stage.name,
        "made_by": "python benchmarks/ship_alignment.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "train_seconds": json.loads((stage / "metrics.json").read_text()).get("train_seconds"),
        "adapter": {"file": PACKED, "format": packing["format"], "source_sha256": _sha256(source),
                    "sha256": _sha256(tmp / PACKED), "file_bytes": packing["file_bytes"],
                    "factor_budget_bytes": budget, "source_rank": packing["source_rank"],
                    "modules": len(packing["ranks"]),
                    "rank_histogram": dict(sorted(collections.Counter(packing["ranks"].values()).items())),
                    "relative_error_mean": round(packing["relative_error_mean"], 4),
                    "relative_error_max": round(packing["relative_error_max"], 4),
                    "ranks": packing["ranks"]},
    }
    if evaluation is not None:
        metrics = json.loads((evaluation / "metrics.json").read_text())
        record["evaluation"] = {"of": "the packed adapter", "run": str(evaluation),
                                "harmful": metrics.get("harmful"), "tasks": metrics.get("tasks")}
    (tmp / "shipped.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", type=Path, help="a finished alignment stage directory (runs/store/align-...)")
    parser.add_argument("--evaluation", type=Path, help="the packed alignment's evaluate run, quoted in the record")
    parser.add_argument("--budget", type=int, default=FACTOR_BUDGET, help="int8 factor bytes of the packed adapter")
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args(argv)
    record = ship(args.stage, args.out, args.evaluation, args.budget)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({k: v for k, v in record["adapter"].items() if k != "ranks"}, indent=1))
    print(f"{args.out}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
