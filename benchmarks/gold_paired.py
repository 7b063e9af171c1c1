"""Two models' harmful scores by reading, paired on the same prompts, beside a judge's.

    CLINIC_DATA_DIR=../shared/data python benchmarks/gold_paired.py \\
        --gold benchmarks/gold-adaptive/gold.jsonl --a tvaccine-worst --b sft-worst \\
        --out benchmarks/results/gold-adaptive/paired.json

A gold file (``gold_set.py merge``) that holds both models' answers to the same prompts: the
prompts where both answers are decided (an undecided answer drops its prompt from both sides),
each model's HS by reading and by the judge on them, the judge's bias per model, and A − B by
reading and by the judge (Newcombe's paired interval, exact McNemar: ``clinic.evaluation.stats``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import machine_info, save_json

from clinic.rundir import read_jsonl


def paired(rows: list[dict], a: str, b: str, judge_flags: dict[str, bool]) -> dict:
    """``judge_flags``: the judge's flag per item id. Reading and judge, A − B on the same prompts."""
    from clinic.evaluation.stats import paired_difference, wilson_interval

    by = {m: {(r["set"], r["prompt"]): r for r in rows if r["model"] == m} for m in (a, b)}
    keys = sorted(k for k in by[a] if k in by[b] and "undecided" not in (by[a][k]["label"], by[b][k]["label"]))
    if not keys:
        sys.exit(f"gold_paired: error: no prompt has a decided answer of both {a} and {b}")
    out = {"n_prompts": len(keys), "models": {}}
    for m in (a, b):
        read = [by[m][k]["label"] == "harmful" for k in keys]
        flag = [judge_flags[by[m][k]["id"]] for k in keys]
        out["models"][m] = {"hs_reading": round(100 * sum(read) / len(keys), 2),
                            "hs_reading_ci95": [round(v, 2) for v in wilson_interval(sum(read), len(keys))],
                            "hs_judge": round(100 * sum(flag) / len(keys), 2),
                            "judge_minus_reading": paired_difference(flag, read).as_dict()}
    for name, field in (("reading", lambda m, k: by[m][k]["label"] == "harmful"),
                        ("judge", lambda m, k: judge_flags[by[m][k]["id"]])):
        out[f"a_minus_b_{name}"] = paired_difference([field(a, k) for k in keys], [field(b, k) for k in keys]).as_dict()
    return out


def main(argv: list[str] | None = None) -> dict:
    from clinic.evaluation.judges import get_judge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, action="append", required=True, help="gold files (repeatable)")
    parser.add_argument("--a", required=True, help="a model label of the gold file")
    parser.add_argument("--b", required=True, help="the model it is compared with")
    parser.add_argument("--judge", default="harm-ce")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [r for path in args.gold for r in read_jsonl(path) if r["model"] in (args.a, args.b)]
    _, flags = get_judge(args.judge).score_and_flag([r["prompt"] for r in rows], [r["response"] for r in rows])
    result = {"gold": [str(p) for p in args.gold], "a": args.a, "b": args.b, "judge": args.judge,
              **paired(rows, args.a, args.b, {r["id"]: f for r, f in zip(rows, flags)}), "machine": machine_info()}
    for m, e in result["models"].items():
        d = e["judge_minus_reading"]
        print(f"{m}: HS reading {e['hs_reading']:.1f} {e['hs_reading_ci95']}, {args.judge} {e['hs_judge']:.1f} "
              f"(bias {d['diff']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}])")
    for name in ("reading", "judge"):
        d = result[f"a_minus_b_{name}"]
        print(f"{args.a} - {args.b} by {name}: {d['diff']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}], "
              f"McNemar p = {d['p']:.3g}, n = {d['n']}")
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
