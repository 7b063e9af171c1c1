"""The optional vLLM generation backend: same answers as HF generation where vllm is installed;
a warning and the HF answers where it is not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clinic.errors import ClinicError
from clinic.evaluation import vllm_backend
from clinic.evaluation.generate import generate
from clinic.evaluation.vllm_backend import generate_with

PROMPTS = [[1, 40, 41, 42], [1, 50, 51], [1, 60, 61, 62, 63, 64]]


def test_without_vllm_falls_back_to_hf_with_a_warning(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: False)
    expected = generate(model, tok, PROMPTS, batch_size=2, max_new_tokens=6, progress=False)
    with pytest.warns(RuntimeWarning, match="vllm is not installed"):
        got = generate_with("vllm", model, tok, PROMPTS, batch_size=2, max_new_tokens=6)
    assert got == expected
    assert generate_with("hf", model, tok, PROMPTS, batch_size=3, max_new_tokens=6) == expected


def test_unknown_backend_is_a_user_error(tiny_llama):
    from clinic.stages.evaluate import EvalConfig

    with pytest.raises(ClinicError, match="unknown generation backend 'tgi'"):
        generate_with("tgi", *tiny_llama, PROMPTS)
    with pytest.raises(ClinicError, match="unknown generation backend"):
        EvalConfig(backend="tgi", judges=["keyword"], tasks=[])


def test_vllm_matches_hf_generation(tiny_llama):
    pytest.importorskip("vllm", reason="vllm is not installed (pip install clinic[vllm])")
    model, tok = tiny_llama
    expected = generate(model, tok, PROMPTS, batch_size=3, max_new_tokens=8, progress=False)
    assert vllm_backend.generate_vllm(model, tok, PROMPTS, max_new_tokens=8) == expected


# -- the vLLM path, through a stand-in that records what clinic asks of vLLM (tests/fake_vllm) -----

FAKE = Path(__file__).resolve().parent / "fake_vllm"


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """The fake ``vllm`` importable here and in the spawned generation process (spawn passes the
    parent's sys.path), its LLM(...) calls recorded."""
    record = tmp_path / "llm-calls.jsonl"
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]))
    assert vllm_backend.vllm_available()
    return lambda: [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A local base model folder and one LoRA fine-tuning on it, its update made large (so that an
    evaluation that drops the adapter answers visibly differently)."""
    from safetensors.torch import load_file, save_file

    from clinic.modeling.models import tiny_random_model
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    root = tmp_path_factory.mktemp("vllm")
    model, tok = tiny_random_model("llama", seed=3)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    run = run_train("finetune", model=str(root / "base"), train=train_config(max_steps=1, batch_size=2, max_length=256),
                    data=DataConfig(task="sst2", n=4), output=root / "ft")
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 300 if "lora_B" in k else v for k, v in tensors.items()}, weights)
    return run


def _evaluate(tmp_path, model, name, *extra):
    from clinic.cli import main

    return main(["evaluate", "--model", str(model), "--judges", "keyword", "--n-prompts", "4", "--n-task", "2",
                 "--max-new-tokens", "6", "--batch-size", "2", "--output", str(tmp_path / name), *extra])


def _answers(folder):
    return [json.loads(line)["response"] for line in (folder / "generations.jsonl").read_text().splitlines()]


def test_vllm_merged_answers_equal_hf_and_get_what_was_asked(tmp_path, fake_vllm, lora_run, data_dir):
    assert _evaluate(tmp_path, lora_run, "hf") == 0
    assert _evaluate(tmp_path, lora_run, "v", "--backend", "vllm", "--vllm-mode", "merged", "--dtype", "float32",
                     "--enforce-eager") == 0
    assert _answers(tmp_path / "v") == _answers(tmp_path / "hf")
    calls = fake_vllm()
    assert len(calls) == 4  # one LLM per prompt set, task and guard set (each released before the judges)
    assert {(c["dtype"], c["tensor_parallel_size"], c["enforce_eager"], c.get("enable_lora")) for c in calls} == {
        ("float32", 1, True, None)}


def test_vllm_lora_request_on_the_base_and_no_eager_unless_asked(tmp_path, fake_vllm, lora_run, data_dir):
    assert _evaluate(tmp_path, lora_run, "hf") == 0
    assert _evaluate(tmp_path, lora_run, "v", "--backend", "vllm") == 0  # auto: one adapter on a loadable base
    assert _answers(tmp_path / "v") == _answers(tmp_path / "hf")
    call = fake_vllm()[0]
    assert call["enable_lora"] is True and call["enforce_eager"] is False
    assert Path(call["model"]).resolve() == (lora_run.parent / "base").resolve()


def test_a_dropped_adapter_stops_the_stage_before_scoring(tmp_path, fake_vllm, lora_run, data_dir, capsys,
                                                          monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DROP_ADAPTER", "1")
    assert _evaluate(tmp_path, lora_run, "v", "--backend", "vllm", "--vllm-mode", "lora") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers' loading bar comes before it)
    assert last.startswith("clinic: error: vLLM's greedy answers differ from HF's beyond near-ties")
    assert "dropped adapter" in last
    assert not (tmp_path / "v").exists()
