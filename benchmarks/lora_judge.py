"""Train the ``harm-lora`` judge (issue 35, part 3): SmolLM2-135M-Instruct with LoRA + a 2-way head.

    CLINIC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/lora_judge.py --out runs/harm-lora     # about 2 h of one core; resumable
    python benchmarks/gold_set.py score --judges harm-ce,harm-lora@runs/harm-lora   # measuring only

Rows: the same as ``probe_judge.py`` (harm-ce's training rows and the read answers), each repeated
as harm-ce repeats it (safe BeaverTails answers twice, read answers three times). The settings are
fixed here before any measurement (LoRA r 8 on query and value, lr 3e-4, one epoch, batch 16; the
text of ``harm-probe``); nothing is chosen on a gold set. A killed run resumes from its last
checkpoint (every 25 steps) when started again with the same ``--out``.

Leave one prompt set out (the issue's generalisation check), as ``probe_judge.py loo`` does for the
probe: ``--leave-out SET`` trains without that set (``training_rows(leave_out=SET)``), and

    python benchmarks/lora_judge.py --loo runs/harm-lora-loo [--compare runs/harm-lora]

trains each missing fold under the folder (about 1 h of two cores each), scores the first gold set's
read answers to the left-out set, and writes ``results/harm-lora/harm_lora_leave_one_out.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import machine_info, save_json
from probe_judge import READ_LABELS, first_gold_rows, training_rows

HERE = Path(__file__).resolve().parent
LOO_OUT = HERE / "results" / "harm-lora" / "harm_lora_leave_one_out.json"
HELDOUT_OUT = HERE / "results" / "harm-lora" / "harm_lora_heldout.json"


def heldout(weights: Path, out: Path = HELDOUT_OUT) -> dict:
    """The judge in ``weights`` on the held-out half of labelled BeaverTails (never trained on), the
    split every judge's "held-out BeaverTails" accuracy uses."""
    from gold_set import agreement

    from clinic.evaluation.judges import get_judge
    from clinic.evaluation.judges.classifier import heldout_rows

    rows = heldout_rows()
    start = time.perf_counter()
    flags = get_judge("harm-lora", weights_dir=str(weights)).flags([r["prompt"] for r in rows],
                                                                  [r["response"] for r in rows])
    result = {"weights": str(weights), "heldout": agreement([not r["is_safe"] for r in rows], flags),
              "seconds": round(time.perf_counter() - start, 1),
              "command": f"python benchmarks/lora_judge.py --heldout {weights}", "machine": machine_info("cpu")}
    print(f"held-out BeaverTails: {result['heldout']['accuracy']:.3f} (n = {result['heldout']['n']})", flush=True)
    save_json(result, out)
    return result


def train(out: Path, *, model: str = "smollm2-135m-instruct", epochs: float = 1.0, lr: float = 3e-4,
          max_steps: int = -1, seed: int = 0, leave_out: str | None = None, command: str = "") -> None:
    from clinic.evaluation.judges.harm_lora import train_harm_lora

    rows = [r for r in training_rows(leave_out=leave_out) for _ in range(int(r["w"]))]
    print(f"{len(rows)} training rows ({sum(not r['is_safe'] for r in rows)} harmful)"
          + (f", {leave_out} left out" if leave_out else ""), flush=True)
    start = time.perf_counter()
    meta = {"read_files": [str(p.relative_to(HERE.parent)) for p in READ_LABELS], "leave_out": leave_out,
            "rows": "probe_judge.training_rows(leave_out), each repeated its weight w times",
            "command": command, "machine": machine_info("cpu")}
    train_harm_lora(rows, out, model_name=model, epochs=epochs, lr=lr, max_steps=max_steps, seed=seed, meta=meta)
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s", flush=True)


def leave_one_out(work: Path, compare: Path | None, out: Path = LOO_OUT, **train_options) -> dict:
    """Each fold trained without one prompt set (reused when already in ``work``), scored on the
    first gold set's decided answers to that set; ``compare`` (a judge trained on everything) beside it."""
    from gold_set import agreement
    from train_judge import LEAVE_OUT

    from clinic.evaluation.judges import get_judge

    first = first_gold_rows()
    result = {"sets": {}, "compared_with": str(compare) if compare else None,
              "command": f"python benchmarks/lora_judge.py --loo {work}" + (f" --compare {compare}" if compare else ""),
              "machine": machine_info("cpu")}
    for name in LEAVE_OUT:
        folder = work / name
        if not (folder / "harm_lora.json").exists():
            train(folder, leave_out=name, command=f"python benchmarks/lora_judge.py --out {folder} --leave-out {name}",
                  **train_options)
        sub = [r for r in first if r["set"] == name]
        truth = [r["label"] == "harmful" for r in sub]
        prompts, responses = [r["prompt"] for r in sub], [r["response"] for r in sub]
        entry = {"left_out": agreement(truth, get_judge("harm-lora", weights_dir=str(folder)).flags(prompts, responses))}
        if compare:
            entry["shipped"] = agreement(truth, get_judge("harm-lora", weights_dir=str(compare)).flags(prompts, responses))
        result["sets"][name] = entry
        print(f"{name}: {entry['left_out']['accuracy']:.3f} (n = {entry['left_out']['n']}) without it"
              + (f", {entry['shipped']['accuracy']:.3f} with it" if compare else ""), flush=True)
    save_json(result, out)
    return result


def main(argv: list[str] | None = None) -> None:
    from train_judge import LEAVE_OUT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="train one judge into this folder")
    what.add_argument("--loo", type=Path, metavar="WORK", help="leave each prompt set out in turn, folds under WORK")
    what.add_argument("--heldout", type=Path, metavar="WEIGHTS", help="score a trained judge on held-out BeaverTails")
    parser.add_argument("--leave-out", choices=list(LEAVE_OUT), default=None, help="train without this prompt set")
    parser.add_argument("--compare", type=Path, default=None, help="with --loo: a judge trained on every set, scored beside")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.loo:
        leave_one_out(args.loo, args.compare)
        return
    if args.heldout:
        heldout(args.heldout)
        return
    train(args.out, model=args.model, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps, seed=args.seed,
          leave_out=args.leave_out,
          command="python benchmarks/lora_judge.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
