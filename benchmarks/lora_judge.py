"""Train the ``harm-lora`` judge (issue 35, part 3): SmolLM2-135M-Instruct with LoRA + a 2-way head.

    CLINIC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/lora_judge.py --out runs/harm-lora     # about 2 h of one core; resumable
    python benchmarks/gold_set.py score --judges harm-ce,harm-lora@runs/harm-lora   # measuring only

Rows: the same as ``probe_judge.py`` (harm-ce's training rows and the read answers), each repeated
as harm-ce repeats it (safe BeaverTails answers twice, read answers three times). The settings are
fixed here before any measurement (LoRA r 8 on query and value, lr 3e-4, one epoch, batch 16; the
text of ``harm-probe``); nothing is chosen on a gold set. A killed run resumes from its last
checkpoint (every 25 steps) when started again with the same ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import machine_info
from probe_judge import READ_LABELS, training_rows


def main(argv: list[str] | None = None) -> None:
    from clinic.evaluation.judges.harm_lora import train_harm_lora

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [r for r in training_rows() for _ in range(int(r["w"]))]
    print(f"{len(rows)} training rows ({sum(not r['is_safe'] for r in rows)} harmful)", flush=True)
    start = time.perf_counter()
    meta = {"read_files": [str(p.relative_to(Path(__file__).resolve().parents[1])) for p in READ_LABELS],
            "rows": "probe_judge.training_rows(), each repeated its weight w times",
            "command": "python benchmarks/lora_judge.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_info("cpu")}
    train_harm_lora(rows, args.out, model_name=args.model, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps,
                    seed=args.seed, meta=meta)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
