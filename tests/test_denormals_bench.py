"""benchmarks/denormals.py: both settings train the same stage, and the adapter comparison tells a
changed weight from an unchanged one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import denormals  # noqa: E402


def _adapter(folder: Path, weights: dict) -> Path:
    (folder / "adapter").mkdir(parents=True)
    save_file(weights, str(folder / "adapter" / "adapter_model.safetensors"))
    return folder


def test_adapter_difference(tmp_path):
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[3.0]])}
    b = {"x": torch.tensor([1.0, 2.5]), "y": torch.tensor([[3.0]])}
    same = denormals.adapter_difference(_adapter(tmp_path / "a", a), _adapter(tmp_path / "a2", dict(a)))
    assert same == {"max_abs": 0.0, "relative_norm": 0.0, "bit_identical": True}
    moved = denormals.adapter_difference(tmp_path / "a", _adapter(tmp_path / "b", b))
    assert moved["bit_identical"] is False
    assert moved["max_abs"] == pytest.approx(0.5)
    assert moved["relative_norm"] == pytest.approx(0.5 / (1 + 4 + 9) ** 0.5)
    with pytest.raises(SystemExit, match="different tensors"):
        denormals.adapter_difference(tmp_path / "a", _adapter(tmp_path / "c", {"x": a["x"]}))


def test_one_thread_runs_of_both_settings_train_the_same_adapter(tmp_path, capsys):
    out = tmp_path / "denormals.json"
    result = denormals.main(["--model", "tiny-random-llama", "--methods", "sft", "--steps", "1", "--threads", "1",
                             "--out", str(out)])
    record = result["methods"]["sft"]
    assert [r["flush"] for r in record["runs"]] == ["off", "on"]
    assert record["adapter_on_vs_off"]["bit_identical"] is True
    assert record["runs"][0]["train_loss"] == record["runs"][1]["train_loss"]
    assert json.loads(out.read_text())["machine"]["torch_threads"] == 1
    assert "sft:" in capsys.readouterr().out
