"""The optional vLLM generation backend: same answers as HF generation where vllm is installed;
a warning and the HF answers where it is not."""

from __future__ import annotations

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
