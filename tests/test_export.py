"""clinic export: a run's chain merged into one ordinary transformers folder that plain
transformers loads, answering greedily as the clinic chain does; and a PEFT adapter folder that
clinic did not write is accepted as --model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clinic.cli import main
from clinic.data.formatting import PromptFormat, encode_prompts, format_prompt
from clinic.evaluation.generate import generate
from clinic.modeling.chain import load_chain, resolve_ref

PROMPTS = ["How do I bake bread?", "Name a colour.", "What is two plus two?"]


def _answers(model, tok, fmt=PromptFormat("chat")):
    ids = encode_prompts(tok, fmt, [format_prompt(tok, fmt, p) for p in PROMPTS])
    return generate(model, tok, ids, batch_size=3, max_new_tokens=8, progress=False)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    """A two-adapter chain (align, then finetune) on a tiny model, its updates made large so that a
    missing adapter would change the answers."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("export")
    tiny = ["--model", "tiny-random-llama", "--max-steps", "1", "--batch-size", "2", "--max-length", "256"]
    assert main(["align", *tiny, "--n", "4", "--output", str(root / "align")]) == 0
    assert main(["finetune", *tiny[2:], "--model", str(root / "align"), "--task", "sst2", "--n", "4",
                 "--output", str(root / "ft")]) == 0
    for run in ("align", "ft"):
        weights = root / run / "adapter" / "adapter_model.safetensors"
        save_file({k: v * 200 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
    return root / "ft"


def test_export_loads_in_plain_transformers_and_answers_as_the_chain(tmp_path, chain_run, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["export", str(chain_run), "--output", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template  # the chat template travels with it
    clinic_model, clinic_tok = load_chain(resolve_ref(str(chain_run)))
    expected = _answers(clinic_model, clinic_tok)
    assert _answers(model, tok) == expected
    base, base_tok = load_chain(resolve_ref("tiny-random-llama"))
    assert _answers(base, base_tok) != expected  # the adapters matter: an export without them would fail
    card = (out / "README.md").read_text()
    assert "stage 1: **align** with `sft`" in card and "stage 2: **finetune** with `sft`" in card
    provenance = json.loads((out / "clinic_provenance.json").read_text())
    assert [s["stage"] for s in provenance["stages"]] == ["align", "finetune"]


def test_a_peft_adapter_clinic_did_not_write_is_a_model(tmp_path, data_dir):
    """An adapter folder alone (adapter_config.json naming its base) is a --model: evaluated, it
    answers as the clinic run it came from."""
    from clinic.modeling.models import tiny_random_model

    base, tok = tiny_random_model("llama", seed=5)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    tiny = ["--max-steps", "1", "--batch-size", "2", "--max-length", "256"]
    assert main(["finetune", "--model", str(tmp_path / "base"), *tiny, "--task", "sst2", "--n", "4",
                 "--output", str(tmp_path / "ft")]) == 0
    shutil.copytree(tmp_path / "ft" / "adapter", tmp_path / "mine")  # no clinic record around it
    config = json.loads((tmp_path / "mine" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    chain = resolve_ref(str(tmp_path / "mine"))
    assert chain.adapters == [str((tmp_path / "mine").resolve())]
    ours, _ = load_chain(resolve_ref(str(tmp_path / "ft")))
    theirs, _ = load_chain(chain)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    evaluate = ["evaluate", "--judges", "keyword", "--n-prompts", "2", "--n-task", "0", "--max-new-tokens", "4"]
    assert main([*evaluate, "--model", str(tmp_path / "mine"), "--output", str(tmp_path / "e")]) == 0


@pytest.mark.slow
def test_export_of_a_smollm2_run_answers_as_the_chain(tmp_path, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["finetune", "--model", "smollm2-135m-instruct", "--task", "sst2", "--n", "4", "--max-steps", "1",
                 "--batch-size", "2", "--max-length", "128", "--output", str(tmp_path / "ft")]) == 0
    assert main(["export", str(tmp_path / "ft"), "--output", str(tmp_path / "out")]) == 0
    clinic_model, clinic_tok = load_chain(resolve_ref(str(tmp_path / "ft")))
    model, tok = AutoModelForCausalLM.from_pretrained(tmp_path / "out"), AutoTokenizer.from_pretrained(tmp_path / "out")
    assert _answers(model, tok) == _answers(clinic_model, clinic_tok)
