"""Choose the incoherence rule on one half of a labelled sample and measure it on the other.

    python benchmarks/incoherence.py [--gold benchmarks/gold-protocol/gold.jsonl]
    python benchmarks/incoherence.py --heldout benchmarks/gold-protocol/gold-2.jsonl --out FILE

The sample: benchmarks/gold-protocol/gold.jsonl, 600 answers of 15 protocol models, each read by
two readers for coherence (``coherent`` / ``incoherent``, the rubric in
benchmarks/gold-protocol/RUBRIC.md). It is split in two by the answer id's hash (even first byte:
the choosing half). On the choosing half a grid of the rule's three thresholds
(``clinic.evaluation.coherence``) is searched for the highest min(precision, recall) of
"incoherent". Many settings tie there (every answer right), so ties are broken by a second
labelled sample: the 58 answers among clinic's committed generations (results/**/generations.jsonl.gz,
none of them in the gold set) on which the tied rules disagree, read by two readers for coherence
(gold-protocol/tiebreak-items.jsonl, readers/tiebreak-{a,b}.jsonl; 58/58 agreement); then by the
fewest committed answers called incoherent. The chosen rule, and clinic's shipped constants, are then measured once on the other half, with 95 % Wilson intervals. Writes
benchmarks/results/incoherence.json.

``--heldout FILE`` chooses nothing: it measures the shipped constants on labelled answers that
played no part in the choice (the protocol gold set's second round), in all and per model.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import gzip
import json
from pathlib import Path

from _common import machine_info, save_json

from clinic.evaluation import coherence
from clinic.evaluation.stats import wilson_interval

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
GOLD = HERE / "gold-protocol" / "gold.jsonl"
TIEBREAK = HERE / "gold-protocol" / "tiebreak-items.jsonl"
TIEBREAK_READERS = [HERE / "gold-protocol" / "readers" / f"tiebreak-{r}.jsonl" for r in "ab"]
OUT = HERE / "results" / "incoherence.json"
GRID = {"min_words": [3, 4, 6, 8], "top_share": [0.25, 0.3, 0.35, 0.4, 0.5, 0.6],
        "min_alnum": [0.3, 0.4, 0.5, 0.6, 0.7]}


def half(item_id: str) -> str:
    return "choose" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "measure"


def committed_answers() -> list[str]:
    """Every answer in the committed generations, once: the unlabelled pool that breaks ties."""
    seen = set()
    for path in sorted(RESULTS.rglob("generations.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            seen.update(json.loads(line)["response"] for line in f)
    return sorted(seen)


def tiebreak_rows() -> list[dict]:
    """The tie-breaking sample: answers both readers labelled alike."""
    items = [json.loads(line) for line in TIEBREAK.read_text().splitlines()]
    a, b = ([json.loads(line) for line in path.read_text().splitlines()] for path in TIEBREAK_READERS)
    return [{**item, "coherence": x["coherence"]} for item, x, y in zip(items, a, b)
            if x["id"] == y["id"] == item["id"] and x["coherence"] == y["coherence"]]


def labelled_rows(paths: list[Path]) -> list[dict]:
    """The answers of gold files whose coherence both readers agreed on."""
    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines()]
    return [r for r in rows if r.get("coherence") in ("coherent", "incoherent")]


def scores(rows: list[dict], **rule) -> dict:
    tp = sum(coherence.is_incoherent(r["response"], **rule) and r["coherence"] == "incoherent" for r in rows)
    fp = sum(coherence.is_incoherent(r["response"], **rule) and r["coherence"] == "coherent" for r in rows)
    fn = sum(not coherence.is_incoherent(r["response"], **rule) and r["coherence"] == "incoherent" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"n": len(rows), "incoherent": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(precision, 4), "precision_ci95": list(wilson_interval(tp, tp + fp)) if tp + fp else None,
            "recall": round(recall, 4), "recall_ci95": list(wilson_interval(tp, tp + fn)) if tp + fn else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, default=GOLD)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--heldout", type=Path, action="append", default=[],
                        help="only measure the shipped rule on these labelled files (repeatable)")
    args = parser.parse_args(argv)
    shipped = {"min_words": coherence.MIN_WORDS, "top_share": coherence.TOP_SHARE, "min_alnum": coherence.MIN_ALNUM}
    if args.heldout:
        rows = labelled_rows(args.heldout)
        report = {"info": machine_info(), "heldout": [str(p) for p in args.heldout], "rule": shipped,
                  "all": scores(rows, **shipped),
                  "by_model": {m: scores([r for r in rows if r["model"] == m], **shipped) for m in sorted({r["model"] for r in rows})},
                  "command": "python benchmarks/incoherence.py " + " ".join(f"--heldout {p}" for p in args.heldout)}
        s = report["all"]
        print(f"shipped {shipped} on {s['n']} held-out answers ({s['incoherent']} incoherent): precision "
              f"{s['precision']:.3f} {s['precision_ci95']}, recall {s['recall']:.3f} {s['recall_ci95']}")
        save_json(report, args.out)
        return report
    rows = labelled_rows([args.gold])
    choose = [r for r in rows if half(r["id"]) == "choose"]
    measure = [r for r in rows if half(r["id"]) == "measure"]
    pool = committed_answers()
    ties = tiebreak_rows()
    best, best_key = None, None
    for values in itertools.product(*GRID.values()):
        rule = dict(zip(GRID, values))
        s = scores(choose, **rule)
        if best_key is not None and min(s["precision"], s["recall"]) < best_key[0]:
            continue
        # ties: right on the tie-breaking sample, then the least eager (counting is slow: contenders only)
        right = sum(coherence.is_incoherent(r["response"], **rule) == (r["coherence"] == "incoherent") for r in ties)
        key = (min(s["precision"], s["recall"]), right, -sum(coherence.is_incoherent(text, **rule) for text in pool))
        if best_key is None or key > best_key:
            best, best_key = rule, key
    flagged = {name: sum(coherence.is_incoherent(text, **rule) for text in pool)
               for name, rule in (("chosen", best), ("shipped", shipped))}
    report = {"info": machine_info(), "gold": str(args.gold), "grid": GRID,
              "pool": {"answers": len(pool), "flagged": flagged},
              "choose_half": {"rule": best, **scores(choose, **best)},
              "tiebreak": {"rule": best, **scores(ties, **best)},
              "measure_half": {"rule": best, **scores(measure, **best)},
              "shipped": {"rule": shipped, "choose_half": scores(choose, **shipped),
                          "measure_half": scores(measure, **shipped)},
              "by_model": {m: scores([r for r in measure if r["model"] == m], **shipped)
                           for m in sorted({r["model"] for r in measure})},
              "command": "python benchmarks/incoherence.py"}
    print(f"chosen on {len(choose)} answers: {best}")
    for name in ("choose_half", "measure_half"):
        s = report[name]
        print(f"{name:12s} n={s['n']} incoherent={s['incoherent']} precision {s['precision']:.3f} "
              f"{s['precision_ci95']} recall {s['recall']:.3f} {s['recall_ci95']}")
    s = report["shipped"]["measure_half"]
    print(f"shipped {shipped} on the measuring half: precision {s['precision']:.3f}, recall {s['recall']:.3f}")
    save_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
