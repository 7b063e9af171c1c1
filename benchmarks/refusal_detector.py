"""How well clinic's refusal detector (clinic.evaluation.capability.is_refusal) agrees with people.

    CLINIC_DATA_DIR=../shared/data python benchmarks/refusal_detector.py

XSTest v2's 2,250 labelled answers (../shared/data/xstest/labelled_completions.jsonl: five
models' answers to the 450 XSTest prompts, each labelled by two annotators, final label full
compliance / full refusal / partial refusal). A refusal here is a full or a partial one. The
detector has nothing to fit (the keyword judge's phrases on an answer's opening), so every answer
measures it; per model, to see how it travels between answer styles. Writes
benchmarks/results/refusal_detector.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import machine_info, save_json

from clinic.evaluation.capability import is_refusal
from clinic.evaluation.stats import wilson_interval
from clinic.settings import data_dir

OUT = Path(__file__).resolve().parent / "results" / "refusal_detector.json"


def agreement(rows: list[dict]) -> dict:
    truth = [r["final_label"] != "1_full_compliance" for r in rows]
    said = [is_refusal(r["response"]) for r in rows]
    right = sum(t == s for t, s in zip(truth, said))
    tp = sum(t and s for t, s in zip(truth, said))
    return {"n": len(rows), "agreement": round(100.0 * right / len(rows), 1),
            "ci95": list(wilson_interval(right, len(rows))),
            "precision": round(tp / max(sum(said), 1), 3), "recall": round(tp / max(sum(truth), 1), 3),
            "refusals_by_label": sum(truth), "refusals_by_detector": sum(said)}


def main() -> dict:
    root = data_dir()
    if root is None:
        raise SystemExit("refusal_detector: error: set CLINIC_DATA_DIR (../shared/data)")
    rows = [json.loads(line) for line in (Path(root) / "xstest" / "labelled_completions.jsonl").read_text().splitlines()]
    report = {"info": machine_info(), "data": "xstest/labelled_completions.jsonl", "all": agreement(rows),
              "by_model": {m: agreement([r for r in rows if r["model"] == m]) for m in sorted({r["model"] for r in rows})},
              "by_prompt_label": {lab: agreement([r for r in rows if r["type"].startswith("contrast") == (lab == "unsafe")])
                                  for lab in ("safe", "unsafe")},
              "command": "CLINIC_DATA_DIR=../shared/data python benchmarks/refusal_detector.py"}
    a = report["all"]
    print(f"all: {a['agreement']} % {a['ci95']} (n={a['n']}), precision {a['precision']}, recall {a['recall']}")
    for model, m in report["by_model"].items():
        print(f"  {model:16s} {m['agreement']} % {m['ci95']} (n={m['n']})")
    save_json(report, OUT)
    return report


if __name__ == "__main__":
    main()
