"""Ship the calibrated protocol's SFT alignment of SmolLM2-135M-Instruct with clinic, for ``clinic demo``.

The protocol's alignment (cell B of docs/protocol.md: 1,024 refusals + 512 Alpaca rows, 2 epochs,
384 LoRA steps) is what makes benign fine-tuning keep the alignment, and it takes 25 minutes on two
cores: more than the demo's 15-minute budget. So the demo loads it from the package instead of
training it (``clinic demo --alignment train`` trains it). This script copies a finished alignment
stage into ``src/clinic/assets/smollm2-protocol-aligned/``: its record (``config.yaml``,
``run.json``, ``metrics.json``, ``data_indices.json``) and its LoRA adapter cast to float16 (half
the bytes; the cast's largest change is written down), plus ``shipped.json``:

    python benchmarks/ship_alignment.py runs/store/align-sft-7213ccb9c0eb \\
        --evaluation results/calib-b/store/evaluate-sft-<hash>

``--evaluation`` names the aligned model's evaluation whose numbers the record quotes.
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship(stage: Path, out: Path, evaluation: Path | None = None) -> dict:
    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    if not (stage / "DONE").exists() or not (stage / "adapter" / "adapter_model.safetensors").exists():
        sys.exit(f"ship_alignment: error: {stage} is not a finished alignment stage with an adapter")
    config = yaml.safe_load((stage / "config.yaml").read_text())
    if config.get("stage") != "align":
        sys.exit(f"ship_alignment: error: {stage} is a {config.get('stage')} stage, not an alignment")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "adapter").mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copy2(stage / name, tmp / name)
    shutil.copy2(stage / "adapter" / "adapter_config.json", tmp / "adapter" / "adapter_config.json")
    source = stage / "adapter" / "adapter_model.safetensors"
    weights = load_file(source)
    half = {k: v.to(torch.float16).contiguous() for k, v in weights.items()}
    cast_error = max(float((half[k].float() - v.float()).abs().max()) for k, v in weights.items())
    largest = max(float(v.abs().max()) for v in weights.values())
    save_file(half, tmp / "adapter" / "adapter_model.safetensors")
    record = {
        "what": "the SFT alignment of cell B of docs/protocol.md (configs/protocol-smollm2.yaml, seed 0)",
        "source_stage": stage.name,
        "made_by": "python benchmarks/ship_alignment.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "train_seconds": json.loads((stage / "metrics.json").read_text()).get("train_seconds"),
        "adapter": {"dtype": "float16", "tensors": len(half), "source_sha256": _sha256(source),
                    "sha256": _sha256(tmp / "adapter" / "adapter_model.safetensors"),
                    "largest_abs_weight": largest, "largest_cast_change": cast_error},
    }
    if evaluation is not None:
        metrics = json.loads((evaluation / "metrics.json").read_text())
        record["evaluation"] = {"stage": evaluation.name, "harmful": metrics.get("harmful"), "tasks": metrics.get("tasks")}
    (tmp / "shipped.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", type=Path, help="a finished alignment stage directory (runs/store/align-...)")
    parser.add_argument("--evaluation", type=Path, help="the aligned model's evaluate stage, quoted in the record")
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args(argv)
    record = ship(args.stage, args.out, args.evaluation)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps(record["adapter"], indent=1))
    print(f"{args.out}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
