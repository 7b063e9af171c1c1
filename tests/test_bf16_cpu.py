"""``--bf16`` without a GPU: the training arguments ask for the CPU (Trainer refuses bf16 with no
accelerator otherwise) and a training step runs its matrix products under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from clinic.data.formatting import PromptFormat, training_row
from clinic.modeling.training import train_config
from clinic.methods.trainer import ClinicTrainer
from clinic.modeling.models import tiny_random_model

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                                reason="the CPU path: on an accelerator bf16 goes there")


@pytest.mark.parametrize("bf16", [False, True])
def test_a_training_step_on_the_cpu_autocasts_to_bf16_when_asked(bf16, tmp_path):
    model, tok = tiny_random_model("llama")
    fmt = PromptFormat("chat", None)
    rows = [training_row(tok, fmt, f"question {i}", "", f"I cannot help with that {i}.") for i in range(4)]
    args = train_config("cpu-align", bf16=bf16, batch_size=2, max_steps=1).sft_config(str(tmp_path), disable_tqdm=True)
    assert args.bf16 is bf16
    trainer = ClinicTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                            prompt_format=fmt)
    seen = []
    layer = model.model.layers[0].mlp.down_proj
    hook = (layer.base_layer if hasattr(layer, "base_layer") else layer).register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype))
    try:
        trainer.train()
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision: the weights stay fp32


def test_bf16_on_a_cpu_without_native_bf16_warns_it_is_slower(tmp_path, monkeypatch, caplog):
    from clinic.modeling import training as config

    monkeypatch.setattr(config, "native_cpu_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="clinic.modeling.training"):
        train_config("cpu-align", bf16=True).sft_config(str(tmp_path))
    assert "emulated" in caplog.text and "--no-bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(config, "native_cpu_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="clinic.modeling.training"):
        train_config("cpu-align", bf16=True).sft_config(str(tmp_path))
        train_config("cpu-align", bf16=False).sft_config(str(tmp_path))
    assert "emulated" not in caplog.text
