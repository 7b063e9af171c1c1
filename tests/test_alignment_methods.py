"""Alignment-stage defences through the pipeline, beyond the contract every method keeps
(tests/test_contract.py: registration, two steps on every architecture and with gradient
checkpointing, save/load, determinism)."""

from __future__ import annotations

from _alignment_support import cpu_settings  # noqa: F401


def test_tvaccine_through_the_pipeline(tmp_path, data_dir):
    """The pipeline loads the harmful stream from its named source and the run finishes."""
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    out = run_train("align", model="tiny-random-llama", method="tvaccine",
                    train=train_config("cpu-align", max_steps=2, batch_size=2, max_length=64, logging_steps=1),
                    data=DataConfig(source="refusals", n=8), output=tmp_path / "run",
                    method_options={"harmful_size": 4, "active_layers": 1})
    assert (out / "adapter").exists() and (out / "metrics.json").exists()
