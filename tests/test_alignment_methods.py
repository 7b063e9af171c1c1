"""Every alignment-stage defence runs a few steps on each tiny architecture, and is registered
with documented options."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _alignment_support import make_trainer, cpu_settings  # noqa: F401

from clinic.methods.registry import get_method, methods_for

ARCHS = ("llama", "qwen2", "gemma", "mistral")
METHODS = {
    "vaccine": {"rho": 2.0},
    "tvaccine": {"active_layers": 1, "resample_every": 1, "score_every": 2},
    "repnoise": {},
    "booster": {},
    "tar-lite": {"reproduce_bug": False},
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(METHODS))
def test_runs_a_few_steps(tmp_path, method, arch):
    trainer = make_trainer(method, tmp_path, arch, METHODS[method], max_steps=2, batch_size=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if n in before)


@pytest.mark.parametrize("method", list(METHODS))
def test_with_gradient_checkpointing(tmp_path, method):
    trainer = make_trainer(method, tmp_path, "llama", METHODS[method], max_steps=1, batch_size=2,
                           gradient_checkpointing=True)
    assert math.isfinite(trainer.train().training_loss)


def test_registry_and_options():
    align = methods_for("align")
    for name in METHODS:
        spec = get_method(name, "align")
        assert spec.stages == ("align",) and spec.summary
        for f in dataclasses.fields(spec.config):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
        assert name in align
    assert "tar" not in align  # named honestly
    for name in ("tvaccine", "repnoise", "booster", "tar-lite"):
        assert "harmful" in get_method(name, "align").config().stream_specs()


def test_tvaccine_through_the_pipeline(tmp_path, data_dir):
    """The pipeline loads the harmful stream from its named source and the run finishes."""
    from clinic.methods.config import train_config
    from clinic.pipeline import DataSpec, run_train

    out = run_train("align", model="tiny-random-llama", method="tvaccine",
                    train=train_config("cpu-align", max_steps=2, batch_size=2, max_length=64, logging_steps=1),
                    data=DataSpec(source="refusals", n=8), output=tmp_path / "run",
                    method_options={"harmful_size": 4, "active_layers": 1})
    assert (out / "adapter").exists() and (out / "metrics.json").exists()
