"""Device and dtype everywhere (issue 33): every stage computes where --device says and loads its
models in the --dtype asked for; neither is ever part of a stage's hash; a device this machine
lacks is a one-line error. The GPU itself is exercised by benchmarks/gpu_check.sh."""

from __future__ import annotations

import json

import pytest
import torch

from clinic.cli import main
from clinic.errors import ClinicError
from clinic.modeling import device as dev

TINY = ["--model", "tiny-random-llama"]


def test_auto_is_the_cpu_here_and_fp32_on_it():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert dev.resolve_device("auto") == dev.resolve_device(None) == "cpu"
    assert dev.resolve_dtype("auto", "cpu") == torch.float32
    assert dev.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert dev.generation_batch("cpu", 16) == 16 and dev.generation_batch("cuda", 16) == 64
    assert dev.generation_batch("cuda", 16, asked=8) == 8


@pytest.mark.parametrize("argv", [
    ["evaluate", *TINY, "--judges", "keyword", "--n-prompts", "2", "--n-task", "0"],
    ["align", *TINY, "--n", "4", "--max-steps", "1"],
    ["sink", *TINY, "--n", "2"],
    ["curate", *TINY, "--selector", "random", "--n-candidates", "4"],
])
def test_a_device_this_machine_lacks_is_one_line_and_writes_nothing(tmp_path, capsys, argv):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code = main([*argv, "--device", "cuda", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no CUDA device is visible" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ClinicError, match="unknown device 'tpu'"):
        dev.resolve_device("tpu")


@pytest.fixture
def forced(monkeypatch):
    """A device resolver that answers a non-default target (the CPU here, recorded), so each stage
    is seen to ask for it and to put its model there, in the dtype asked for."""
    asked = []

    def resolve(name="auto"):
        asked.append(name)
        return "cpu"

    monkeypatch.setattr(dev, "resolve_device", resolve)
    return asked


def _param(model):
    p = next(model.parameters())
    return p.device.type, p.dtype


def test_evaluate_loads_the_model_and_the_judge_where_asked(tmp_path, forced, monkeypatch, data_dir):
    import clinic.stages.evaluate as ev

    seen = {}
    real = ev.evaluate_model

    def spy(model, tok, cfg, fmt, judges=None, batch_size=None, vllm=None):
        seen["model"], seen["batch"] = _param(model), batch_size
        seen["judge"] = _param(judges["harm-ce"].model)
        return real(model, tok, cfg, fmt, judges, batch_size, vllm)

    monkeypatch.setattr(ev, "evaluate_model", spy)
    out = ev.run_evaluate("tiny-random-llama", ev.EvalConfig(n_prompts=2, judges=["harm-ce"], tasks=[], batch_size=2),
                          tmp_path / "e", device="gpu-like", dtype="bfloat16", generation_batch=1)
    assert forced == ["gpu-like"] and seen == {"model": ("cpu", torch.bfloat16), "batch": 1,
                                               "judge": ("cpu", torch.float32)}
    import yaml

    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["execution"] == {"device": "cpu", "dtype": "bfloat16", "generation_batch": 1}


def test_sink_curate_and_repair_load_where_asked(tmp_path, forced, monkeypatch, data_dir):
    import clinic.modeling.chain as chain_mod
    import clinic.stages.sink as sink
    from clinic.modeling.training import train_config
    from clinic.stages.curate import CurateConfig, run_curate
    from clinic.stages.repair import run_repair
    from clinic.stages.train import DataConfig, run_train

    loaded = []
    real = chain_mod.load_chain

    def spy(chain, *args, **kwargs):
        model, tok = real(chain, *args, **kwargs)
        loaded.append(_param(model))
        return model, tok

    monkeypatch.setattr(chain_mod, "load_chain", spy)
    monkeypatch.setattr(sink, "load_chain", spy, raising=False)
    sink.run_sink_analysis("tiny-random-llama", tmp_path / "s", n=2, device="x", dtype="bfloat16")
    assert loaded[-1] == ("cpu", torch.bfloat16)
    run_curate(CurateConfig(model="tiny-random-llama", selector="highest-loss", n_candidates=4, n_validation=2,
                            n_harmful=2, batch_size=2, max_length=256), tmp_path / "c", progress=False, device="x",
               dtype="bfloat16")
    assert loaded[-1] == ("cpu", torch.bfloat16)
    ft = run_train("finetune", model="tiny-random-llama", train=train_config(max_steps=1, batch_size=2, max_length=256),
                   data=DataConfig(task="sst2", n=4), output=tmp_path / "ft", device="x")
    loaded.clear()
    run_repair(str(ft), "antidote", tmp_path / "r", {"n_harmful": 2}, progress=False, device="x", dtype="bfloat16")
    assert loaded and all(p == ("cpu", torch.bfloat16) for p in loaded)
    assert forced.count("x") == 4


def test_device_and_dtype_never_enter_a_stage_hash(tmp_path, data_dir):
    """The same experiment run with and without an execution block plans the same stages, and a
    stage's recorded config (what its hash covers) has no device or dtype in it."""
    import yaml

    from clinic.experiment import Experiment

    raw = {"name": "d", "model": "tiny-random-llama", "align": {"methods": ["sft"], "n": 4},
           "finetune": {"methods": ["sft"], "n": 4, "poison_ratios": [0.5]}, "evaluate": {"judges": ["keyword"]}}
    plain = Experiment.from_dict(raw).plan()
    placed = Experiment.from_dict({**raw, "execution": {"device": "cuda", "dtype": "bfloat16"}}).plan()
    assert [s.dirname for s in plain] == [s.dirname for s in placed]
    text = json.dumps([s.config for s in placed])
    assert "bfloat16" not in text and "cuda" not in text
    del yaml


def test_report_to_is_an_execution_setting_from_the_flag_or_the_environment(tmp_path, capsys, monkeypatch):
    from transformers import integrations

    from clinic.modeling.training import report_to

    monkeypatch.delenv("CLINIC_REPORT_TO", raising=False)
    assert report_to(None) == "none"
    monkeypatch.setenv("CLINIC_REPORT_TO", "tensorboard")
    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: True)
    monkeypatch.setattr(integrations, "is_wandb_available", lambda: True)
    assert report_to(None) == "tensorboard" and report_to("wandb,tensorboard") == "wandb,tensorboard"
    with pytest.raises(ClinicError, match="unknown tracker 'tensorbord'"):
        report_to("tensorbord")
    monkeypatch.setattr(integrations, "is_mlflow_available", lambda: False)
    code = main(["align", *TINY, "--n", "4", "--max-steps", "1", "--report-to", "mlflow", "--output", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "the mlflow package is not installed" in err and not (tmp_path / "a").exists()
