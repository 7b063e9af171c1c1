"""benchmarks/alignment_cost.py: a worker measures a step at a short sequence length (the
placeholder rows the trainer is built with must not be cut by ``--seq``), and a shape that is not
the device's default is saved under its own key beside the default one."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import alignment_cost  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=64, vocab_size=300, tie_word_embeddings=True)


def test_worker_times_a_step_at_a_short_sequence_length():
    # in a subprocess, as the benchmark runs it: the worker silences logging process-wide
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import alignment_cost as a; "
            f"a.SHAPES['tiny'] = {TINY!r}; "
            "print(json.dumps(a.worker({'device': 'cpu', 'shape': 'tiny', 'variant': 'sft', 'batch': 2, "
            "'seq': 16, 'steps': 1, 'threads': 1})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["variant"] == "sft" and len(out["step_times_s"]) == 1 and out["step_s"] > 0


def _record(tmp_path: Path, shape: str) -> dict:
    args = argparse.Namespace(out=tmp_path / "cost.json", batch=8, seq=128, default_malloc=False)
    results = {"sft": {"step_s": 2.0, "step_cpu_s": 4.0, "train_delta_mb": 100.0, "peak_rss_mb": 500.0},
               "repnoise": {"step_s": 7.0, "step_cpu_s": 16.0, "train_delta_mb": 300.0, "peak_rss_mb": 700.0}}
    return alignment_cost._record(args, "cpu", shape, 2, "cmd", results, complete=True)


def test_a_non_default_shape_is_saved_beside_the_default(tmp_path):
    _record(tmp_path, "small")
    record = _record(tmp_path, "smollm2-135m")
    saved = json.loads((tmp_path / "cost.json").read_text())
    assert set(saved) == {"cpu", "cpu-smollm2-135m"}
    assert saved["cpu"]["shape"]["name"] == "small" and saved["cpu-smollm2-135m"]["shape"]["name"] == "smollm2-135m"
    assert record["ratios_to_sft"]["repnoise"] == {"time": 3.5, "memory": 3.0, "cpu_time": 4.0, "peak_rss": 1.4}
