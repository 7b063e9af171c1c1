"""The contract every registered method keeps, parametrised over the registries themselves, so that
a new defence (align or finetune) or repair method is tested the moment it is registered:

- its registration is valid: a trainer of the base class, a config whose every field has help
  text and whose streams name its own fields, an engine declaration among the known engines that
  the engine check honours (accepts each declared engine, refuses every other);
- it trains two steps on a tiny random model of every architecture ``tiny_random_model`` supports
  (llama, qwen2, gemma, mistral), with finite losses, and changes the adapter; a step runs with
  gradient checkpointing;
- through the pipeline (llama): its run directory reloads to the same logits the trained model
  gave, and two runs with the same seed save the same adapter weights (determinism);
- a repair method, on every architecture: changes the fine-tuning adapter, its run reloads to a
  model other than the unrepaired one, and two runs with the same seed save the same weights.

A method runs with its defaults, its data streams cut to a few samples; ``EXERCISE`` lists the
options that make two steps reach all of a method's step (e.g. T-Vaccine's re-sampling).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import TrainerCallback
from _alignment_support import HARMFUL, REFUSALS, chains, cpu_settings, quiet, tiny_trainer  # noqa: F401

from clinic.errors import ClinicError
from clinic.methods.config import MethodConfig
from clinic.methods.engines import ENGINES, check_engine
from clinic.methods.registry import METHODS
from clinic.methods.trainer import ClinicTrainer
from clinic.repair.base import REPAIRS

ARCHS = ("llama", "qwen2", "gemma", "mistral")
STAGED = [(stage, name) for name, spec in METHODS.items() for stage in spec.stages]
STREAM_SIZE = 8
EXERCISE = {
    "vaccine": {"rho": 2.0},
    "tvaccine": {"active_layers": 1, "resample_every": 1, "score_every": 2},
    "tar-lite": {"reproduce_bug": False},
    "lisa": {"align_steps": 1, "finetune_steps": 1, "prox_start": 0.0},
}
REPAIR_EXERCISE = {"safelora": {"num_layers": 3}, "antidote": {"n_harmful": 4},
                   "panacea": {"n_harmful": 4, "n_task": 4, "steps": 1}}


def test_the_registries_hold_every_method():
    """Discovery finds the modules (no list kept by hand); a wrong name gets the nearest one."""
    assert {"sft", "vaccine", "tvaccine", "repnoise", "booster", "tar-lite", "surgery", "lisa"} <= set(METHODS)
    assert ("align", "sft") in STAGED and ("finetune", "sft") in STAGED
    assert list(REPAIRS)[:3] == ["safelora", "antidote", "panacea"]  # listed in their declared order, new ones after
    for spec in REPAIRS.values():
        assert spec.summary
        for f in dataclasses.fields(spec.config):
            assert f.metadata.get("help"), f"{spec.name}.{f.name} has no help text"
    with pytest.raises(ClinicError, match=r"unknown repair method 'safelra' \(did you mean 'safelora'\?\)"):
        REPAIRS.get("safelra")


def method_options(name: str) -> dict:
    spec = METHODS[name]
    small = {size: STREAM_SIZE for _source, size in spec.config.streams.values()}
    return {**small, **EXERCISE.get(name, {})}


@pytest.mark.parametrize("stage,method", STAGED)
def test_registration_and_engine_declaration(stage, method):
    spec = METHODS[method]
    assert issubclass(spec.trainer, ClinicTrainer) and issubclass(spec.config, MethodConfig)
    assert spec.summary and spec.name == method and stage in spec.stages
    assert spec.trainer.method_name == method and spec.trainer.engines == spec.engines
    names = {f.name for f in dataclasses.fields(spec.config)}
    for f in dataclasses.fields(spec.config):
        assert f.metadata.get("help"), f"{method}.{f.name} has no help text"
    for stream, fields in spec.config.streams.items():
        assert set(fields) <= names, f"{method}: stream {stream} names fields the config lacks"
    if {"harmful_source", "harmful_size"} <= names:  # the shared fields come from the one mixin
        from clinic.methods.config import HarmfulStreamConfig

        assert issubclass(spec.config, HarmfulStreamConfig)
    assert spec.engines and set(spec.engines) <= set(ENGINES)
    assert check_engine(method, spec.engines, "single") == "single"
    for engine in ENGINES:
        if engine in spec.engines:
            assert check_engine(method, spec.engines, engine) == engine
        else:
            with pytest.raises(ClinicError, match=f"method {method!r} cannot run under"):
                check_engine(method, spec.engines, engine)


def small_trainer(method: str, stage: str, tmp_path, arch: str = "llama", max_steps: int = 2, **overrides):
    """A trainer of ``method`` on a tiny ``arch`` model, its streams loaded as the pipeline loads them."""
    from clinic.methods.registry import method_config
    from clinic.stages.train import _extra_streams

    spec, options = METHODS[method], method_options(method)
    streams = _extra_streams(spec, method_config(spec, **options), 0)[0]
    return tiny_trainer(method, stage, tmp_path, samples=REFUSALS if stage == "align" else HARMFUL + REFUSALS,
                        extra_data=streams, options=options, arch=arch, preset=f"cpu-{stage}", max_steps=max_steps,
                        batch_size=2, logging_steps=1, max_length=128, **overrides)


def assert_finite_weights(trainer, what: str):
    """Trainer reports a NaN loss as the running mean of the earlier ones: the weights tell."""
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), f"{what}: non-finite weights"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stage,method", STAGED)
def test_two_steps_on_every_architecture(tmp_path, data_dir, stage, method, arch):
    trainer = small_trainer(method, stage, tmp_path, arch)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    assert_finite_weights(trainer, f"{method} on {arch}")
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed), f"{method} on {arch} trained no adapter"
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if n in before)


@pytest.mark.parametrize("stage,method", STAGED)
def test_a_step_with_gradient_checkpointing(tmp_path, data_dir, stage, method):
    trainer = small_trainer(method, stage, tmp_path, max_steps=1, gradient_checkpointing=True)
    assert math.isfinite(trainer.train().training_loss)
    assert_finite_weights(trainer, method)


# --------------------------------------------------------------------------------------------
# through the pipeline: the run directory and determinism

PROBE = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


class FinalLogits(TrainerCallback):
    """Keeps the trained model's logits on a fixed probe at the end of training."""

    logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE.to(model.device)).logits.float().cpu()


def _logits(run) -> torch.Tensor:
    from clinic.modeling.chain import load_chain, resolve_ref

    model, _tok = load_chain(resolve_ref(str(run)))
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE).logits.float()


def _adapter(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _assert_same_weights(a: dict, b: dict, what: str):
    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: two runs with the same seed differ in {differ[:3]}"


@pytest.mark.parametrize("stage,method", STAGED)
def test_run_directory_reloads_and_runs_are_deterministic(tmp_path, data_dir, stage, method):
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    quiet()
    data = DataConfig(source="refusals", n=8) if stage == "align" else DataConfig(task="sst2", n=8, poison_ratio=0.5)
    train = train_config(f"cpu-{stage}", max_steps=2, batch_size=2, max_length=256, logging_steps=1, seed=3)
    runs, logits = [], []
    for i in range(2):
        keep = FinalLogits()
        runs.append(run_train(stage, model="tiny-random-llama", method=method, train=train, data=data,
                              output=tmp_path / f"run{i}", method_options=method_options(method), callbacks=[keep]))
        logits.append(keep.logits)
    torch.testing.assert_close(_logits(runs[0]), logits[0], rtol=1e-4, atol=1e-5)
    _assert_same_weights(_adapter(runs[0]), _adapter(runs[1]), method)


class _InterruptAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stage,method", STAGED)
def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, data_dir, stage, method, monkeypatch):
    """Ctrl-C after the step-1 checkpoint, then the same stage again: it resumes there and
    finishes (clinic.methods.checkpoints; exactness is tested for SFT in tests/test_resume.py)."""
    import json

    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    quiet()
    data = DataConfig(source="refusals", n=8) if stage == "align" else DataConfig(task="sst2", n=8, poison_ratio=0.5)
    train = train_config(f"cpu-{stage}", max_steps=3, batch_size=2, max_length=256, logging_steps=1, seed=3)
    monkeypatch.setenv("CLINIC_CHECKPOINT_MINUTES", "1e-9")
    with pytest.raises(KeyboardInterrupt):
        run_train(stage, model="tiny-random-llama", method=method, train=train, data=data, output=tmp_path / "run",
                  method_options=method_options(method), callbacks=[_InterruptAfterFirstSave()])
    run = run_train(stage, model="tiny-random-llama", method=method, train=train, data=data, output=tmp_path / "run",
                    method_options=method_options(method))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 1 and metrics["steps"] == 3
    assert not list((run / "checkpoints").glob("checkpoint-*"))
    assert all(math.isfinite(e["loss"]) for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
               if "loss" in e)


# --------------------------------------------------------------------------------------------
# repair methods


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(REPAIRS))
def test_repair_changes_the_adapter_reloads_and_is_deterministic(chains, tmp_path, method, arch):
    import json

    from clinic.repair.base import RepairConfig
    from clinic.stages.repair import run_repair

    ft = chains(arch)
    original = _adapter(ft)
    runs = [run_repair(str(ft), method, tmp_path / f"{method}{i}", REPAIR_EXERCISE.get(method, {}),
                       RepairConfig(batch_size=4, seed=3), progress=False) for i in range(2 if arch == "llama" else 1)]
    repaired = _adapter(runs[0])
    assert set(repaired) == set(original)
    changed = [k for k in original if not torch.equal(original[k], repaired[k])]
    assert changed, f"{method} on {arch} changed nothing"
    if method == "safelora":  # only B changes, in exactly the projected layers
        assert all("lora_B" in k for k in changed)
        assert len(changed) == json.loads((runs[0] / "metrics.json").read_text())["projected"] == 3
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["stage"] == "repair" and record["model_chain"]["adapters"][-1] == "adapter"
    # the run reloads like a fine-tuned run, and what it loads is the repaired model
    assert not torch.equal(_logits(runs[0]), _logits(ft)), f"{method} on {arch}: the reloaded run is unrepaired"
    if len(runs) == 2:
        _assert_same_weights(repaired, _adapter(runs[1]), method)
