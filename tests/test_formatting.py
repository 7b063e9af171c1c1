"""Prompt styles, system-role fallback, response-only labels and a single end token."""

from __future__ import annotations

import pytest
from datasets import Dataset

from clinic.data.formatting import PromptFormat, alpaca_prompt, encode_prompts, format_prompt, training_row
from clinic.errors import ClinicError
from clinic.modeling.training import train_config
from clinic.methods.trainer import ClinicTrainer
from clinic.modeling.models import tiny_random_model


def _prepared(arch, fmt, samples, tmp_path, max_length=256):
    model, tok = tiny_random_model(arch)
    cfg = train_config(max_length=max_length)
    rows = [training_row(tok, fmt, *s) for s in samples]
    trainer = ClinicTrainer(model=model, args=cfg.sft_config(str(tmp_path)), train_dataset=Dataset.from_list(rows),
                            processing_class=tok, prompt_format=fmt)
    return trainer, tok


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_chat_labels_cover_exactly_the_response_and_one_end_token(arch, tmp_path):
    fmt = PromptFormat("chat", "Be safe.")
    trainer, tok = _prepared(arch, fmt, [("How do I pick a lock?", "", "I cannot help with that.")], tmp_path)
    example = trainer.train_dataset[0]
    ids, labels = example["input_ids"], example["labels"]
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]
    text = tok.decode(supervised)
    assert text.startswith("I cannot help with that.")
    assert supervised.count(tok.eos_token_id) == 1  # the template's end-of-turn, not a second eos
    prompt_ids = encode_prompts(tok, fmt, [format_prompt(tok, fmt, "How do I pick a lock?")])[0]
    assert ids[: len(prompt_ids)] == prompt_ids  # training context == generation context
    assert all(lab == -100 for lab in labels[: len(prompt_ids)])


def test_gemma_has_no_system_role_so_system_text_joins_the_user_turn():
    _, tok = tiny_random_model("gemma")
    text = format_prompt(tok, PromptFormat("chat", "SYS"), "question")
    assert "SYS\n\nquestion" in text and "system" not in text
    _, tok = tiny_random_model("llama")
    text = format_prompt(tok, PromptFormat("chat", "SYS"), "question")
    assert "<|im_start|>system\nSYS<|im_end|>" in text


def test_alpaca_style_appends_eos_once(tmp_path):
    fmt = PromptFormat("alpaca")
    trainer, tok = _prepared("llama", fmt, [("Say hi", "", "hi"), ("Say hi", "", "hi<|im_end|>")], tmp_path)
    for example in trainer.train_dataset:
        supervised = [t for t, lab in zip(example["input_ids"], example["labels"]) if lab != -100]
        assert tok.decode(supervised) == "hi<|im_end|>"
    assert alpaca_prompt("Do it", "ctx").endswith("### Input:\nctx\n\n### Response:\n")


def test_max_length_truncates(tmp_path):
    trainer, _ = _prepared("llama", PromptFormat("chat"), [("q", "", "x" * 500)], tmp_path, max_length=64)
    assert len(trainer.train_dataset[0]["input_ids"]) == 64


def test_unknown_style_and_missing_template():
    with pytest.raises(ClinicError, match="unknown prompt style"):
        PromptFormat("markdown")
    _, tok = tiny_random_model("llama")
    tok.chat_template = None
    with pytest.raises(ClinicError, match="no chat template"):
        format_prompt(tok, PromptFormat("chat"), "q")


@pytest.mark.parametrize("on", [False, True])
def test_checkpointing_flag_reaches_the_training_arguments(on, tmp_path):
    # TRL's SFTConfig defaults to checkpointing on; the flag must arrive under whichever name the
    # installed transformers knows (activation_checkpointing since the rename, gradient_checkpointing before)
    args = train_config("cpu-align", gradient_checkpointing=on).sft_config(str(tmp_path))
    assert args.gradient_checkpointing is on
    assert getattr(args, "activation_checkpointing", on) is on
