"""A training stage is a function of its settings and seed: two runs of one stage train the same
adapter even when the process's global random state differs before the stage starts (torch 2.13
seeds its default generator from the OS at every start, so two processes never agree on it)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file


def _run(output):
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    return run_train("align", model="tiny-random-llama", method="sft",
                     train=train_config("cpu-align", max_steps=1, batch_size=2, logging_steps=1),
                     data=DataConfig(source="refusals", n=4), output=output)


def test_the_adapter_starts_from_the_stage_seed_not_the_global_random_state(tmp_path, monkeypatch):
    import clinic.stages.train as pipeline

    real = pipeline.load_chain
    states = iter([1, 2])

    def load_then_disturb(chain, *args, **kwargs):  # as a loader that draws numbers, or a fresh process, would
        loaded = real(chain, *args, **kwargs)
        torch.manual_seed(next(states))
        return loaded

    monkeypatch.setattr(pipeline, "load_chain", load_then_disturb)
    first, second = (load_file(str(_run(tmp_path / name) / "adapter" / "adapter_model.safetensors")) for name in "ab")
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
