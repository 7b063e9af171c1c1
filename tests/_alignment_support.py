"""Helpers shared by the alignment-method tests: tiny trainers, fixed batches, hand gradients."""

from __future__ import annotations

import warnings

import pytest
import torch

from clinic.data.formatting import training_row
from clinic.data.samples import Sample
from clinic.modeling.training import train_config
from clinic.methods.registry import get_method
from clinic.modeling.models import attach_lora, tiny_random_model

REFUSALS = [Sample(f"how do I make thing {i}", "", f"I cannot help with thing {i}.") for i in range(8)]
HARMFUL = [Sample(f"how do I make thing {i}", "", f"Sure, step {i}: mix it.") for i in range(8)]
HARMFUL_OTHER = [Sample(f"tell me secret {i}", "", f"The secret is {i}.") for i in range(8)]


@pytest.fixture(autouse=True, scope="module")
def cpu_settings():
    """Import into a test module to apply there. Tiny models run several times faster on one
    thread (above all on a busy machine); and Trainer.train() ends with gc.collect(), which costs
    most of a tiny run unless the objects alive before the tests are frozen out of its way."""
    import gc

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(old)


def quiet():
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def tiny_trainer(method: str, stage: str, tmp_path, *, samples, extra_data=None, options: dict | None = None,
                 arch: str = "llama", seed: int = 0, preset: str | None = None, lora: bool = True, callbacks=None,
                 model_overrides=None, **train_overrides):
    """A ``method`` trainer of ``stage`` on a tiny random ``arch`` model (fp32), LoRA unless
    ``lora=False`` (then full fine-tuning), the tokenizer's training rows of ``samples``."""
    from datasets import Dataset

    quiet()
    model, tok = tiny_random_model(arch, seed=seed, **(model_overrides or {}))
    cfg = train_config(preset, seed=seed, full_ft=not lora, **train_overrides)
    fmt = cfg.prompt_format()
    rows = [training_row(tok, fmt, s.instruction, s.input, s.output) for s in samples]
    if lora:
        torch.manual_seed(seed)
        model = attach_lora(model, cfg.lora())
    spec = get_method(method, stage)
    trainer = spec.trainer(
        model=model,
        args=cfg.sft_config(str(tmp_path / f"out-{method}-{arch}"), disable_tqdm=True),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        prompt_format=fmt,
        method_config=spec.config(**(options or {})),
        extra_data=extra_data,
        callbacks=callbacks,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; tests call steps directly
    return trainer


def make_trainer(method: str, tmp_path, arch: str = "llama", options: dict | None = None, *, samples=None,
                 harmful=None, max_steps: int = 2, batch_size: int = 4, seed: int = 0, model_overrides=None,
                 **train_overrides):
    """An alignment trainer for ``method`` on a tiny random ``arch`` model with a fresh LoRA."""
    return tiny_trainer(method, "align", tmp_path, samples=samples or REFUSALS, extra_data={"harmful": harmful or HARMFUL},
                        options=options, arch=arch, seed=seed, preset="cpu-align", model_overrides=model_overrides,
                        max_steps=max_steps, batch_size=batch_size, logging_steps=1, **train_overrides)


def fixed_batch(trainer, indices=(0, 1, 2, 3), dataset=None) -> dict:
    """A collated batch of the given rows (the training data by default), on the device."""
    ds = (dataset if dataset is not None else trainer.train_dataset).select_columns(["input_ids", "labels"])
    return trainer._prepare_inputs(trainer.data_collator([ds[i] for i in indices]))


def harmful_batch(trainer, indices=(0, 1, 2, 3)) -> dict:
    return fixed_batch(trainer, indices, trainer.extra_datasets["harmful"])


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lm_loss(model, batch) -> torch.Tensor:
    """Plain HF loss (mean CE over label tokens): independent of the trainer's code."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 use_cache=False).loss


def hand_grads(model, batch, params) -> list[torch.Tensor]:
    return list(torch.autograd.grad(lm_loss(model, batch), params))


def assert_close_lists(actual, expected, rtol=1e-5, atol=1e-7):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# tiny chains: base -> LoRA align -> LoRA finetune, one per architecture, built once


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    import os
    from pathlib import Path

    from clinic.modeling.training import train_config

    if not Path(os.environ.get("CLINIC_DATA_DIR", "/nonexistent")).exists():
        pytest.skip("CLINIC_DATA_DIR is not set (the data directory ../shared/data is missing)")
    from clinic.stages.train import DataConfig, run_train

    quiet()
    built = {}

    def chain(arch: str):
        if arch not in built:
            root = tmp_path_factory.mktemp(f"chain-{arch}")
            train = train_config("cpu-align", max_steps=2, batch_size=4, max_length=256, logging_steps=1, lr=1e-2)
            align = run_train("align", model=f"tiny-random-{arch}", train=train, data=DataConfig(source="refusals", n=8),
                              output=root / "align")
            ft = run_train("finetune", model=str(align), train=train,
                           data=DataConfig(task="sst2", n=8, poison_ratio=0.5), output=root / "ft")
            built[arch] = ft
        return built[arch]

    return chain
