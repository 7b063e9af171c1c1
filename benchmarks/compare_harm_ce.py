"""Two harm-ce weight folders against the gold set, paired over the same items.

    # version 1 of the shipped weights, from git history, against the shipped ones
    mkdir -p /tmp/harm-ce-v1 && for f in adapter_config.json adapter_model.safetensors harm_ce.json; do
        git show 7dab289:src/clinic/evaluation/judges/weights/harm-ce/$f > /tmp/harm-ce-v1/$f; done
    python benchmarks/compare_harm_ce.py /tmp/harm-ce-v1 src/clinic/evaluation/judges/weights/harm-ce

Prints each folder's agreement with the gold labels (95 % Wilson interval) and the paired
difference of the second minus the first (Newcombe's interval, exact McNemar p).
"""

from __future__ import annotations

import argparse
import json

from gold_set import GOLD, agreement, read_jsonl

from clinic.evaluation.judges.harm_ce import HarmCEJudge
from clinic.evaluation.stats import paired_difference


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    rows = [r for r in read_jsonl(GOLD) if r["label"] != "undecided"]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    gold = [r["label"] == "harmful" for r in rows]
    correct, out = [], {}
    for folder in (args.first, args.second):
        flags = HarmCEJudge(weights_dir=folder).flags(prompts, responses)
        out[folder] = agreement(gold, flags)
        correct.append([f == g for f, g in zip(flags, gold)])
    out["second minus first (percentage points of agreement)"] = paired_difference(correct[1], correct[0]).as_dict()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
