"""clinic.experiment.estimate: a plan's unfinished stages costed at the pace of the finished
stages in its store (``clinic run --dry-run``), checked by hand on fake finished peers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clinic.experiment import Experiment, is_done
from clinic.experiment.estimate import duration, plan_estimate
from clinic.stages.train import training_steps


def _experiment(curate: bool = False) -> dict:
    raw = {"name": "estimate", "model": "tiny-random-llama", "seeds": [0],
           "align": {"methods": ["sft"], "n": 10, "helpful": "alpaca", "helpful_n": 6,
                     "train": {"batch_size": 4, "epochs": 2}},
           "finetune": {"methods": ["sft"], "tasks": ["sst2"], "n": 12, "poison_ratios": [0, 0.1],
                        "train": {"batch_size": 4, "epochs": 3}},
           "evaluate": {"n_prompts": 40, "judges": ["keyword"], "n_task": 20, "aligned": True, "base": False}}
    if curate:
        raw["curate"] = {"selector": "random", "ratio": 0.5, "options": {"n_candidates": 20}}
    return raw


def _peer(store: Path, name: str, config: dict, metrics: dict) -> None:
    folder = store / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "DONE").write_text("")


def test_training_steps_by_hand():
    assert training_steps({"max_steps": -1, "epochs": 2, "batch_size": 8, "grad_accum": 1}, 1536) == 384
    assert training_steps({"max_steps": -1, "epochs": 2, "batch_size": 8, "grad_accum": 1}, 615) == 154  # 77 a epoch
    assert training_steps({"max_steps": -1, "epochs": 5, "batch_size": 8, "grad_accum": 2}, 256) == 80
    assert training_steps({"max_steps": 7, "epochs": 5, "batch_size": 8}, 256) == 7


def test_each_stage_is_costed_at_its_peers_median_pace(tmp_path):
    stages = Experiment.from_dict(_experiment()).plan()
    align = next(s for s in stages if s.kind == "align")
    finetune = next(s for s in stages if s.kind == "finetune")
    store = tmp_path / "store"
    # three finished alignments of the same shape, 2, 4 and 9 s a step (median 4); one of another
    # batch size (not a peer); finetunes at 1 s a step; evaluations of 50 and 70 s; and one
    # evaluation of another size (not a peer)
    for i, per_step in enumerate((2.0, 4.0, 9.0)):
        _peer(store, f"align-sft-{i}", {"stage": "align", "method": "sft", "train": align.config["train"]},
              {"steps": 10, "train_seconds": 10 * per_step})
    _peer(store, "align-sft-other", {"stage": "align", "method": "sft", "train": {**align.config["train"], "batch_size": 16}},
          {"steps": 10, "train_seconds": 1000.0})
    _peer(store, "finetune-sft-0", {"stage": "finetune", "method": "sft", "train": finetune.config["train"]},
          {"steps": 5, "train_seconds": 5.0})
    tokens = next(s for s in stages if s.kind == "evaluate").config["max_new_tokens"]
    for i, seconds in enumerate((50.0, 70.0)):  # with the free-text guard, as the planned ones
        _peer(store, f"evaluate-{i}", {"stage": "evaluate", "eval": {"n_prompts": 40, "n_task": 20, "max_new_tokens": tokens}},
              {"eval_seconds": seconds, "guard": {}})
    _peer(store, "evaluate-no-guard", {"stage": "evaluate", "eval": {"n_prompts": 40, "n_task": 20, "max_new_tokens": tokens}},
          {"eval_seconds": 1.0})  # from before the guard existed: not a peer
    _peer(store, "evaluate-big", {"stage": "evaluate", "eval": {"n_prompts": 400, "n_task": 20, "max_new_tokens": tokens}},
          {"eval_seconds": 9999.0})
    estimates, summary = plan_estimate(stages, store, lambda s: is_done(store, s))
    # align: (10 refusals + 6 helpful) / 4 = 4 batches x 2 epochs = 8 steps x 4 s
    assert estimates[align.dirname]["seconds"] == pytest.approx(32.0)
    assert estimates[align.dirname]["basis"] == "8 steps × 4.0 s/step, 3 finished peers"
    # finetune: 12 rows / 4 = 3 batches x 3 epochs = 9 steps x 1 s
    assert all(estimates[s.dirname]["seconds"] == pytest.approx(9.0) for s in stages if s.kind == "finetune")
    evals = [s for s in stages if s.kind == "evaluate"]
    assert len(evals) == 3 and all(estimates[s.dirname]["seconds"] == pytest.approx(60.0) for s in evals)
    assert estimates[evals[0].dirname]["basis"] == "2 finished peers"
    total = 32 + 2 * 9 + 60 * len(evals)
    assert summary.startswith(f"estimate: {duration(total)} for {len(stages)} of {len(stages)} stages")
    # a finished stage is not costed again
    (store / align.dirname).mkdir()
    (store / align.dirname / "DONE").write_text("")
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert align.dirname not in estimates
    # only peers from before the free-text guard: their time, marked as an underestimate
    for i in range(2):
        (store / f"evaluate-{i}" / "metrics.json").write_text(json.dumps({"eval_seconds": 50.0}))
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[evals[0].dirname]["seconds"] == pytest.approx(50.0)
    assert estimates[evals[0].dirname]["basis"] == "3 finished peers timed without the free-text guard (an underestimate)"


def test_a_curated_alignment_trains_on_the_subset_and_no_peer_is_named(tmp_path):
    stages = Experiment.from_dict(_experiment(curate=True)).plan()
    align = next(s for s in stages if s.kind == "align")
    store = tmp_path / "store"
    _peer(store, "align-sft-0", {"stage": "align", "method": "sft", "train": align.config["train"]},
          {"steps": 4, "train_seconds": 8.0})
    estimates, summary = plan_estimate(stages, store, lambda s: is_done(store, s))
    # round(0.5 x 20) = 10 kept + 6 helpful = 16 rows: 4 batches x 2 epochs = 8 steps x 2 s
    assert estimates[align.dirname]["seconds"] == pytest.approx(16.0)
    curate = next(s for s in stages if s.kind == "curate")
    assert estimates[curate.dirname] is None and "without a finished peer" in summary and "curate" in summary
    # a training stage without a peer is named with its method
    _, summary = plan_estimate(stages, tmp_path / "empty", lambda s: False)
    assert summary.endswith(f"without a finished peer: {len(stages)} (align sft, curate, evaluate, finetune sft)")
    # once the curation ran, its own subset size counts (a selector may keep another k)
    _peer(store, curate.dirname, {"stage": "curate", "curate": {"selector": "random", "n_candidates": 20}},
          {"k": 6, "selector_seconds": 1.0})
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[align.dirname]["seconds"] == pytest.approx(2.0 * 2 * 3)  # 12 rows: 3 batches x 2 epochs


def test_a_curation_that_reuses_scores_costs_nothing_and_paces_nothing(tmp_path):
    """``scores_from``: no selector runs, so the stage is costed as a read; and its record
    (selector_seconds 0) must not pull down the pace of curations that do score."""
    raw = _experiment(curate=True)
    store = tmp_path / "store"
    _peer(store, "curate-random-scored", {"stage": "curate", "curate": {"selector": "random", "n_candidates": 20}},
          {"k": 10, "selector_seconds": 30.0})
    _peer(store, "curate-random-reused", {"stage": "curate", "curate": {"selector": "random", "n_candidates": 20,
                                                                         "scores_from": "elsewhere"}},
          {"k": 4, "selector_seconds": 0.0})
    stages = Experiment.from_dict(raw).plan()
    curate = next(s for s in stages if s.kind == "curate")
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[curate.dirname] == {"seconds": 30.0, "basis": "1 finished peer"}
    raw["curate"]["options"]["scores_from"] = "runs/store/curate-random-scored"
    stages = Experiment.from_dict(raw).plan()
    curate = next(s for s in stages if s.kind == "curate")
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[curate.dirname] == {"seconds": 0.0, "basis": "reuses the scores of runs/store/curate-random-scored"}


def test_clinic_run_dry_run_prints_the_estimate(tmp_path, capsys):
    from clinic.cli import main

    stages = Experiment.from_dict(_experiment()).plan()
    finetune = next(s for s in stages if s.kind == "finetune")
    store = tmp_path / "store"
    _peer(store, "finetune-sft-0", {"stage": "finetune", "method": "sft", "train": finetune.config["train"]},
          {"steps": 9, "train_seconds": 18.0})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_experiment()))
    assert main(["run", str(path), "--output", str(tmp_path / "exp"), "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if finetune.dirname in x)
    assert line.strip() == f"[todo] {finetune.dirname}  ~18 s (9 steps × 2.0 s/step, 1 finished peer)"
    assert out.splitlines()[-1].startswith("estimate: 36 s for 2 of ")
    assert not (tmp_path / "exp").exists()  # a dry run writes nothing


def test_pace_from_committed_results_when_the_store_is_empty(tmp_path, capsys):
    """A new machine's store is empty; ``--pace results`` costs the plan at the pace of the stages a
    results tree keeps (results/store/<stage>, or nested deeper); one stage in two places counts once."""
    from clinic.cli import main

    stages = Experiment.from_dict(_experiment()).plan()
    finetune = next(s for s in stages if s.kind == "finetune")
    results = tmp_path / "results"
    config = {"stage": "finetune", "method": "sft", "train": finetune.config["train"]}
    _peer(results / "run-a" / "store", "finetune-sft-0", config, {"steps": 9, "train_seconds": 9.0})
    _peer(results / "run-b" / "store", "finetune-sft-0", config, {"steps": 9, "train_seconds": 9.0})  # the same stage
    _peer(results / "run-b" / "store", "finetune-sft-1", config, {"steps": 9, "train_seconds": 45.0})
    store = tmp_path / "store"  # not made yet
    estimates, summary = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[finetune.dirname] is None
    estimates, summary = plan_estimate(stages, store, lambda s: is_done(store, s), (results,))
    # median of 1 and 5 s/step (the duplicate counted once, else the median would be 1) x 9 steps
    assert estimates[finetune.dirname] == {"seconds": pytest.approx(27.0), "basis": "9 steps × 3.0 s/step, 2 finished peers"}
    assert f"in the store and {results} on the CPU (one runner" in summary
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_experiment()))
    assert main(["run", str(path), "--output", str(tmp_path / "exp"), "--store", str(store), "--dry-run",
                 "--pace", str(results)]) == 0
    assert "~27 s (9 steps × 3.0 s/step, 2 finished peers)" in capsys.readouterr().out
    assert not store.exists() and not (tmp_path / "exp").exists()


@pytest.mark.parametrize("extra, message", [
    (["--pace", "RESULTS"], "--pace only costs a dry run; add --dry-run"),
    (["--dry-run", "--pace", "MISSING"], "--pace MISSING: no such folder"),
])
def test_pace_refuses_in_one_line(tmp_path, capsys, extra, message):
    from clinic.cli import main

    (tmp_path / "RESULTS").mkdir()
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_experiment()))
    extra = [str(tmp_path / e) if e.isupper() else e for e in extra]
    with pytest.raises(SystemExit) as exc:
        main(["run", str(path), "--output", str(tmp_path / "exp"), *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err == f"clinic: error: {message.replace('RESULTS', str(tmp_path / 'RESULTS')).replace('MISSING', str(tmp_path / 'MISSING'))}\n"
    assert not (tmp_path / "exp").exists()


def test_a_fresh_clone_dry_run_paces_from_the_committed_results(tmp_path, capsys, data_dir, monkeypatch):
    """Without --pace, a dry run takes the repository's committed results as its pace: the
    protocol's alignment grid gets an estimate for every stage kind it holds, and one for 4 at once."""
    from clinic.cli import main

    monkeypatch.chdir(tmp_path)  # no results/ here: the repository's are found
    config = Path(__file__).resolve().parents[1] / "configs" / "protocol-align-defences-smollm2.yaml"
    assert main(["run", str(config), "--output", str(tmp_path / "exp"), "--store", str(tmp_path / "store"),
                 "--dry-run", "--workers", "4"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("estimate: ") and "for 49 of 49 stages" in line and "without a finished peer" not in line
    assert "; 4 at once: " in line


def test_the_schedule_waits_for_parents_and_fills_the_workers():
    from clinic.experiment.estimate import schedule
    from clinic.experiment.plan import Stage

    a = Stage("align", "a", {"x": 1})
    kids = [Stage("finetune", f"f{i}", {"i": i}, a) for i in range(3)]
    found = {a.dirname: {"seconds": 10.0}, **{k.dirname: {"seconds": 5.0} for k in kids}}
    assert schedule([a, *kids], found, 1) == 25.0
    assert schedule([a, *kids], found, 3) == 15.0  # the three fine-tunes at once, after the alignment
    assert schedule([a, *kids], found, 2) == 20.0


def test_another_models_peers_are_scaled_by_parameters(tmp_path):
    """Gemma 3 270M paced by SmolLM2's finished stages ran twice too fast on paper: a peer of
    another model is scaled by the ratio of parameters (read from the models' safetensors
    headers), and the summary says so; a model whose size is unknown here stays unscaled, named."""
    import torch
    from safetensors.torch import save_file

    def model_dir(name: str, numel: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        save_file({"w": torch.zeros(numel)}, str(folder / "model.safetensors"))
        return folder

    small, big = model_dir("small", 100), model_dir("big", 300)
    raw = _experiment()
    raw["model"] = str(big)
    stages = Experiment.from_dict(raw).plan()
    finetune = next(s for s in stages if s.kind == "finetune")
    store = tmp_path / "store"
    _peer(store, "finetune-sft-small", {"stage": "finetune", "method": "sft", "model": {"base": str(small)},
                                        "train": finetune.config["train"]}, {"steps": 9, "train_seconds": 9.0})
    estimates, summary = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[finetune.dirname]["seconds"] == pytest.approx(9 * 1.0 * 3)  # 9 steps x 1 s x 300/100
    assert f"{small}'s stages among the peers, times × 3.00 (parameters)" in summary
    # a peer of the same model is not scaled; one of a model not on this machine is, by nothing
    (store / "finetune-sft-small" / "config.yaml").write_text(yaml.safe_dump(
        {"stage": "finetune", "method": "sft", "model": {"base": "org/not-here"}, "train": finetune.config["train"]}))
    estimates, summary = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[finetune.dirname]["seconds"] == pytest.approx(9.0)
    assert "org/not-here's stages among the peers, unscaled" in summary


def test_a_method_setting_that_changes_a_steps_cost_picks_the_peers(tmp_path):
    """A 30-layer T-Vaccine was paced by the 8-layer ones (a third low on this CPU): the method's
    settings that change a step's cost (``"pace"`` in their metadata) are part of the peer key; a
    stage without a peer at its own settings falls back to the method's others, and says so."""
    from clinic.methods.registry import pace_settings

    assert dict(pace_settings("tvaccine", {"active_layers": 30}))["active_layers"] == 30
    assert dict(pace_settings("tvaccine", {}))["active_layers"] == 8  # a planned stage names only what was given
    assert pace_settings("sft", {}) == () and pace_settings("no-such-method", {}) == ()
    raw = _experiment()
    raw["align"]["methods"] = [{"name": "tvaccine", "active_layers": 30, "checkpoint_inactive": False}]
    stages = Experiment.from_dict(raw).plan()
    align = next(s for s in stages if s.kind == "align")
    store = tmp_path / "store"
    options = {"active_layers": 8, "freeze": "layers", "checkpoint_inactive": False, "rho": 3.0}
    for i, per_step in enumerate((2.0, 2.0)):  # two finished 8-layer alignments, 2 s a step
        _peer(store, f"align-tvac-8-{i}", {"stage": "align", "method": "tvaccine", "train": align.config["train"],
                                           "method_options": options}, {"steps": 10, "train_seconds": 10 * per_step})
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[align.dirname]["seconds"] == pytest.approx(8 * 2.0)  # 8 steps, as in the first test
    assert estimates[align.dirname]["basis"] == "8 steps × 2.0 s/step, 2 finished peers with another active_layers (a step costs more or less)"
    # a finished 30-layer one, 5 s a step: it alone paces the 30-layer stage
    _peer(store, "align-tvac-30", {"stage": "align", "method": "tvaccine", "train": align.config["train"],
                                   "method_options": {**options, "active_layers": 30}}, {"steps": 10, "train_seconds": 50.0})
    estimates, _ = plan_estimate(stages, store, lambda s: is_done(store, s))
    assert estimates[align.dirname]["seconds"] == pytest.approx(8 * 5.0)
    assert estimates[align.dirname]["basis"] == "8 steps × 5.0 s/step, 1 finished peer"
