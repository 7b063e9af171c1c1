"""The experiment runner: grid expansion, stage sharing, determinism, resume after kill -9, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clinic.report.tables import write_report
import yaml

from clinic.cli import main
from clinic.errors import ClinicError
from clinic.experiment import Experiment, run_experiment

TIMING_KEYS = {"train_seconds", "eval_seconds", "peak_memory_mb"}


def tiny_experiment(**changes) -> dict:
    exp = {
        "name": "tiny",
        "model": "tiny-random-llama",
        "seeds": [0],
        "align": {"methods": ["sft"], "n": 8, "train": {"batch_size": 4, "max_length": 512, "logging_steps": 1}},
        "finetune": {"methods": ["sft"], "tasks": ["sst2"], "n": 8, "poison_ratios": [0.0, 0.5],
                     "train": {"batch_size": 4, "max_length": 512, "logging_steps": 1, "epochs": 2}},
        "evaluate": {"n_prompts": 4, "judges": ["keyword"], "n_task": 4, "max_new_tokens": 4, "batch_size": 4},
        "sink": {"n": 2, "max_length": 64},
    }
    for key, value in changes.items():
        exp[key] = value
    return exp


def write_experiment(path: Path, exp: dict) -> Path:
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def stage_outputs(root: Path) -> dict:
    """{stage dir: (metrics without timings, data indices)} of every finished stage."""
    plan = json.loads((root / "plan.json").read_text())
    store = (root / plan["store"]).resolve()
    out = {}
    for stage in plan["stages"]:
        path = store / stage["dir"]
        assert (path / "DONE").exists(), f"{stage['dir']} did not finish"
        record = {}
        for name in ("metrics.json", "data_indices.json"):
            if (path / name).exists():
                data = json.loads((path / name).read_text())
                record[name] = {k: v for k, v in data.items() if k not in TIMING_KEYS}
        if (path / "sink.json").exists():
            record["sink"] = [e["divergence"] for e in json.loads((path / "sink.json").read_text())["entries"]]
        if (path / "generations.jsonl").exists():
            record["generations"] = (path / "generations.jsonl").read_text()
        out[stage["dir"]] = record
    return out


# --------------------------------------------------------------------------------------------
# plan


def test_grid_expands_and_shares_stages(data_dir):
    exp = Experiment.from_dict(tiny_experiment(finetune={"methods": ["sft", "lisa"], "tasks": ["sst2"], "n": 8,
                                                         "poison_ratios": [0.0, 0.1]}))
    kinds = [s.kind for s in exp.plan()]
    # one alignment shared by four fine-tuning runs; base + aligned + 4 fine-tuned evaluations
    assert kinds.count("align") == 1
    assert kinds.count("finetune") == 4
    assert kinds.count("evaluate") == 6
    assert kinds.count("sink") == 4
    align = next(s for s in exp.plan() if s.kind == "align")
    assert all(s.parent.hash == align.hash for s in exp.plan() if s.kind == "finetune")


def test_hash_depends_on_config_and_parent_only(data_dir):
    a = Experiment.from_dict(tiny_experiment()).plan()
    changed = tiny_experiment()
    changed["finetune"]["train"]["lr"] = 1e-3
    b = Experiment.from_dict(changed).plan()
    hashes = lambda plan, kind: [s.hash for s in plan if s.kind == kind]  # noqa: E731
    assert hashes(a, "align") == hashes(b, "align")  # the fine-tuning lr does not touch alignment
    assert set(hashes(a, "finetune")).isdisjoint(hashes(b, "finetune"))
    changed["align"]["n"] = 12
    c = Experiment.from_dict(changed).plan()
    assert hashes(c, "align") != hashes(b, "align")
    assert set(hashes(c, "finetune")).isdisjoint(hashes(b, "finetune"))  # parent changed


def test_plan_runs_each_alignment_s_attacks_before_the_next_alignment():
    """Depth first: every stage comes after its parent, and an aligned model's fine-tunes (with
    their evaluations and sink stages) come before the next alignment, so a long grid finishes
    whole cells early."""
    exp = tiny_experiment()
    exp["align"]["methods"] = ["sft", "vaccine"]
    plan = Experiment.from_dict(exp).plan()
    position = {s.hash: i for i, s in enumerate(plan)}
    assert all(s.parent is None or position[s.parent.hash] < i for i, s in enumerate(plan))
    second_align = next(i for i, s in enumerate(plan) if s.kind == "align" and s.labels["align"] == "vaccine")
    first_subtree = [i for i, s in enumerate(plan) if s.labels.get("align") == "sft" and s.kind != "evaluate"
                     or (s.parent is not None and s.parent.labels.get("align") == "sft")]
    assert len([i for i in first_subtree if plan[i].kind == "finetune"]) == 2
    assert max(first_subtree) < second_align
    assert [s.kind for s in plan[:3]] == ["evaluate", "align", "evaluate"]  # base, aligned, its evaluation


def test_finetune_blocks_filter_aligned_models(data_dir):
    exp = Experiment.from_dict(tiny_experiment(
        align={"methods": ["sft", "vaccine"], "n": 8},
        finetune=[{"aligned_with": ["sft"], "methods": ["sft", "surgery"], "poison_ratios": [0.1], "n": 8},
                  {"aligned_with": ["vaccine"], "methods": ["sft"], "poison_ratios": [0.1, 0.2], "n": 8}]))
    runs = [(s.labels["align"], s.labels["finetune"], s.labels["p"]) for s in exp.plan() if s.kind == "finetune"]
    assert runs == [("sft", "sft", 0.1), ("sft", "surgery", 0.1), ("vaccine", "sft", 0.1), ("vaccine", "sft", 0.2)]


@pytest.mark.parametrize("change, message", [
    ({"fintune": {}}, "unknown key 'fintune' in the experiment file (did you mean 'finetune'?)"),
    ({"align": {"methods": ["sft"], "lr": 1}}, "unknown key 'lr' in align"),
    ({"align": {"methods": ["nope"]}}, "nope"),
    ({"finetune": {"methods": ["vaccine"]}}, "vaccine"),
    ({"finetune": {"poison_ratios": [1.5]}}, "1.5"),
    ({"evaluate": {"judges": ["oracle"]}}, "oracle"),
    ({"finetune": {"tasks": ["imdb"]}}, "imdb"),
    ({"align": {"methods": [{"name": "vaccine", "rhoo": 2}]}}, "rhoo"),
    ({"seeds": []}, "seed"),
    ({"finetune": {"train": {"lrr": 1e-4}}}, "unknown key 'lrr' in train in finetune block 1 (did you mean 'lr'?)"),
    ({"sink": {"harmful_sorce": "x"}}, "unknown key 'harmful_sorce' in sink (did you mean 'harmful_source'?)"),
    ({"sink": {"harmless_source": 3}}, "sink harmless_source must be text, got 3"),
])
def test_bad_experiment_is_one_line_error(tmp_path, data_dir, capsys, change, message):
    path = write_experiment(tmp_path / "bad.yaml", tiny_experiment(**change))
    assert main(["run", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_curate_block_feeds_the_alignments(tmp_path, data_dir):
    exp = tiny_experiment(curate={"selector": "random", "ratio": 0.5,
                                  "options": {"n_candidates": 8, "n_validation": 2, "max_length": 512}},
                          finetune=[], evaluate={"base": False, "n_prompts": 2, "judges": ["keyword"],
                                                 "max_new_tokens": 2}, sink=None)
    exp["align"]["n"] = None
    plan = Experiment.from_dict(exp).plan()
    assert [s.kind for s in plan] == ["curate", "align", "evaluate"]
    assert plan[1].parent is plan[0]
    root = run_experiment(write_experiment(tmp_path / "cur.yaml", exp), tmp_path / "cur")
    store = root / "stages"
    subset = (store / plan[0].dirname / "subset.jsonl").read_text().splitlines()
    assert len(subset) == 4
    indices = json.loads((store / plan[1].dirname / "data_indices.json").read_text())
    assert indices["train"]["n"] == 4  # the alignment trained on the curated subset
    with pytest.raises(ClinicError, match="in curate options"):
        Experiment.from_dict({**exp, "curate": {"selector": "random", "ratio": 0.5, "options": {"gama": 1}}})

    # helpful rows are mixed into the curated subset as into uncurated data (they are not candidates)
    exp["align"].update(helpful="alpaca", helpful_n=3)
    plan_h = Experiment.from_dict(exp).plan()
    assert plan_h[0].dirname == plan[0].dirname  # the same curation stage, reused
    root = run_experiment(write_experiment(tmp_path / "cur-h.yaml", exp), tmp_path / "cur-h")
    indices = json.loads((root / "stages" / plan_h[1].dirname / "data_indices.json").read_text())
    assert indices["train"]["n"] == 7
    assert len(indices["train"]["indices"]["alpaca"]) == 3
    subset_key = str(root / "stages" / plan[0].dirname / "subset.jsonl")
    assert sorted(indices["train"]["indices"]) == sorted(["alpaca", subset_key])


def test_missing_experiment_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# running: determinism, sharing, resume, report


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    if not os.environ.get("CLINIC_DATA_DIR"):
        pytest.skip("data directory missing")
    tmp = tmp_path_factory.mktemp("exp")
    path = write_experiment(tmp / "tiny.yaml", tiny_experiment())
    root = run_experiment(path, tmp / "run-a")
    write_report(root, root / "report", overwrite=True)
    return path, root


def test_run_writes_every_stage_and_report(reference_run):
    _, root = reference_run
    outputs = stage_outputs(root)
    assert len(outputs) == 1 + 1 + 1 + 2 * 3  # base eval, align, aligned eval, 2 × (finetune, eval, sink)
    report = root / "report"
    rows = json.loads((report / "results.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["base", "aligned", "finetuned", "finetuned"]
    finetuned = [r for r in rows if r["stage"] == "finetuned"]
    assert [r["p"] for r in finetuned] == [0.0, 0.5]
    for r in finetuned:
        assert 0 <= r["HS keyword [beavertails-test]"] <= 100
        low, high = r["HS keyword [beavertails-test] ci95"]
        assert low <= r["HS keyword [beavertails-test]"] <= high and r["HS keyword [beavertails-test] n"] == 4
        assert r["seeds"] == [0] and r["FA sst2 n"] == 4
        assert 0 <= r["FA sst2"] <= 100
        assert 0 <= r["positive sink heads"] <= r["heads"]
        assert r["finetune seconds"] > 0 and r["align seconds"] > 0
    for figure in ("hs_vs_p.png", "fa_vs_p.png", "hs_vs_sink_heads.png"):
        assert (report / figure).stat().st_size > 1000
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html  # self-contained
    prov = json.loads((report / "results.json").read_text())["provenance"]
    assert len(prov["data_files"]["refusals"]["sha256"]) == 64
    assert prov["versions"]["torch"]
    assert (report / "results.csv").read_text().count("\n") == len(rows) + 1


def test_same_experiment_twice_is_identical(reference_run, tmp_path):
    path, root = reference_run
    again = run_experiment(path, tmp_path / "run-b")
    assert stage_outputs(again) == stage_outputs(root)


def test_rerun_skips_finished_stages(reference_run, capsys):
    path, root = reference_run
    before = {p: p.stat().st_mtime for p in (root / "stages").iterdir()}
    run_experiment(path, root)
    assert "9 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime for p in (root / "stages").iterdir()} == before


def test_shared_store_runs_common_stages_once(reference_run, tmp_path, capsys):
    path, root = reference_run
    more = tiny_experiment(name="tiny-more")
    more["finetune"]["poison_ratios"] = [0.5, 1.0]
    other = write_experiment(tmp_path / "more.yaml", more)
    run_experiment(other, tmp_path / "more", store=root / "stages")
    out = capsys.readouterr().out
    # base eval, align, aligned eval and the p=0.5 branch (3 stages) already exist in the store
    assert "6 already done" in out


def _kill_when(root: Path, kind: str, cmd: list[str]) -> None:
    """Start the runner, SIGKILL it as soon as a ``kind`` stage is being written."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # same threads as this process
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((root / "stages").glob(f".{kind}-*.partial-*")):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.01)
        pytest.fail(f"runner ended before a {kind} stage was caught (rc {proc.poll()})")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("kind", ["finetune", "evaluate"])
def test_resume_after_kill_matches_uninterrupted_run(reference_run, tmp_path, kind):
    path, root = reference_run
    target = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clinic.cli", "run", str(path), "--output", str(target), "--no-report"]
    _kill_when(target, kind, cmd)
    assert list((target / "stages").glob(f".{kind}-*.partial-*")), "no half-written stage left by the kill"
    assert main(["run", str(path), "--output", str(target)]) == 0
    assert not list((target / "stages").glob(".*partial*"))
    assert stage_outputs(target) == stage_outputs(root)


# Another runner holding a stage: a process that holds the stage's file lock until killed.
_HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])  # kept referenced: a collected FileLock releases its lock
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _lock_free(path) -> bool:
    from filelock import FileLock, Timeout

    try:
        with FileLock(path, timeout=0):
            return True
    except Timeout:
        return False


def test_stage_held_by_a_live_runner_is_waited_for_then_taken_over(reference_run, tmp_path, capsys, monkeypatch):
    from clinic.experiment import runner

    path, root = reference_run
    target = tmp_path / "waits"
    first = Experiment.from_file(path).plan()[0]
    (target / "stages").mkdir(parents=True)
    lock_file = target / "stages" / f".{first.dirname}.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock_file)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waits = []

    def holder_dies_while_we_wait(seconds):  # the other runner ends (or is killed) while we wait
        waits.append(seconds)
        holder.kill()
        holder.wait()

    monkeypatch.setattr(runner, "_wait", holder_dies_while_we_wait)
    try:
        run_experiment(path, target)
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr().out
    assert len(waits) == 1  # every other stage ran first; then it waited once for the held one
    assert "waiting for 1 stage(s) held by another runner" in out
    assert out.index(f"evaluate {first.dirname}") > out.index("waiting for")  # taken over after the holder died
    assert stage_outputs(target) == stage_outputs(root)
    locks = list((target / "stages").glob(".*.lock"))
    assert locks and all(_lock_free(lock) for lock in locks)  # every stage lock released


# Runs `clinic run` with its first stage held until the other runner holds a stage too: without
# this barrier one runner may finish every stage before the other has imported torch (CI saw it),
# and "both runners did work" would depend on start-up timing.
_RUN_WITH_BARRIER = """
import os, sys, time
from pathlib import Path
from clinic.experiment import runner
from clinic.cli import main
barrier, real, first = Path(sys.argv[1]), runner.run_stage, [True]
def run_stage(*args):
    if first:
        first.clear()
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + 300
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return real(*args)
runner.run_stage = run_stage
sys.exit(main(sys.argv[2:]))
"""


def test_two_runners_share_one_store(reference_run, tmp_path):
    path, root = reference_run
    target, barrier = tmp_path / "shared", tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _RUN_WITH_BARRIER, str(barrier),
           "run", str(path), "--output", str(target), "--no-report"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    started = [[line.split()[-1] for line in log.splitlines() if line.startswith("[") and "done in" not in line]
               for log in logs]
    assert all(started), f"both runners held a stage at once, so both ran one: {started}"
    assert sorted(sum(started, [])) == sorted(stage_outputs(root)), "every stage runs exactly once across the two"
    assert stage_outputs(target) == stage_outputs(root)


def _metrics(store: Path, only: Path | None = None) -> dict:
    """{stage dir: metrics without timings} of every finished stage of a store (``only``: of the
    plan of that run directory; the reference run's store also holds other tests' stages)."""
    names = {s["dir"] for s in json.loads((only / "plan.json").read_text())["stages"]} if only else None
    return {d.name: {k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if k not in TIMING_KEYS}
            for d in sorted(store.iterdir()) if (d / "DONE").exists() and (d / "metrics.json").exists()
            and (names is None or d.name in names)}


def _weights(store: Path) -> set[str]:
    return {d.name for d in store.iterdir() if (d / "adapter").exists() or (d / "model").exists()}


def test_a_new_machine_resumes_from_the_exported_results(reference_run, tmp_path, capsys):
    """--reuse: a results tree's stages (benchmarks/export_run.py: outputs without weights) are copied
    in where no stage still to run needs their weights; the rest runs and matches the reference run."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from export_run import export

    path, root = reference_run
    export(root, tmp_path / "results" / "tiny")
    shared = tmp_path / "results" / "store"
    reference = _metrics(root / "stages", only=root)
    # 9 stages, 7 with metrics.json (a sink stage writes sink.json)
    assert len(reference) == 7 and _weights(root / "stages") and not _weights(shared)

    # everything finished there: nothing is trained or evaluated, every stage is a copy
    whole = tmp_path / "store-whole"
    run_experiment(path, tmp_path / "whole", store=whole, reuse=(shared,))
    out = capsys.readouterr().out
    assert "--reuse: 9 stage(s) copied" in out and "] evaluate" not in out and "] align" not in out
    assert _metrics(whole) == reference and not _weights(whole)

    # one evaluation missing there (p = 0.5): its fine-tuned model, and the alignment that model is
    # trained from, have no weights in the copy, so both run again; every other stage is copied
    plan = json.loads((root / "plan.json").read_text())["stages"]
    missing = next(s["dir"] for s in plan if s["kind"] == "evaluate" and s["labels"].get("p") == 0.5)
    shutil.rmtree(shared / missing)
    partial = tmp_path / "store-partial"
    run_experiment(path, tmp_path / "partial", store=partial, reuse=(shared,), dry_run=True)
    lines = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.strip().startswith("[")]
    todo = sorted(name.split("-")[0] for state, name in lines if state == "[todo]")
    assert todo == ["align", "evaluate", "finetune"] and sum(state == "[reuse]" for state, _ in lines) == 6
    run_experiment(path, tmp_path / "partial", store=partial, reuse=(shared,))
    assert "--reuse: 6 stage(s) copied" in capsys.readouterr().out
    assert _metrics(partial) == reference
    assert {name.split("-")[0] for name in _weights(partial)} == {"align", "finetune"} and len(_weights(partial)) == 2
    write_report(tmp_path / "partial", tmp_path / "partial" / "report", overwrite=True)
    rows = json.loads((tmp_path / "partial" / "report" / "results.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["base", "aligned", "finetuned", "finetuned"]


def test_a_search_runs_trial_by_trial_and_each_is_exported(data_dir, tmp_path, monkeypatch, capfd):
    """benchmarks/search_trials.py: each trial run, then exported; run again on an empty store, every
    stage is in the results tree and nothing is trained (a new machine resumes where the last one
    stopped). The trials here are the attacks (p); only they are evaluated, as in a search file."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from search_trials import main as search_trials

    exp = tiny_experiment(name="tiny-search", sink=None)
    exp.pop("sink")
    exp["evaluate"] = {**exp["evaluate"], "base": False, "aligned": False}
    path = write_experiment(tmp_path / "tiny-search.yaml", exp)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "tiny-search"
    assert search_trials([str(path), "--by", "p", "--out", str(out), "--store", "store-a"]) == 0
    said = capfd.readouterr().out
    assert "[1/2] p=0\n" in said and "[2/2] p=0.5\n" in said
    # each trial's export (a process of its own) says what it copied and what is still to run
    assert said.count(f"{out}: ") == 2 and "unfinished, left out: " in said
    assert _metrics(tmp_path / "results" / "store") == _metrics(tmp_path / "store-a")
    assert len(_metrics(tmp_path / "store-a")) == 5  # align, 2 x (finetune, evaluate)
    assert (out / "results.md").exists() and json.loads((out / "plan.json").read_text())["store"] == "../store"
    # a new machine: an empty store, the results tree as committed
    assert search_trials([str(path), "--by", "p", "--out", str(out), "--store", "store-b",
                          "--run-dir", "runs/again"]) == 0
    again = capfd.readouterr().out
    assert "] finetune" not in again and "] align" not in again and "] evaluate" not in again
    assert _metrics(tmp_path / "store-b") == _metrics(tmp_path / "store-a") and not _weights(tmp_path / "store-b")
    with pytest.raises(SystemExit):
        search_trials([str(path), "--by", "p", "--out", str(out), "--trials", "0.3"])
    assert "not a value of p" in capfd.readouterr().err


def test_reuse_keeps_what_a_stage_to_run_or_an_attack_search_needs(tmp_path):
    """reusable(): a stage whose child will run is not reused (its weights are not in the copy), nor the
    aligned model an attack search trains its trials from, however finished its other stages are."""
    from clinic.experiment.plan import Stage
    from clinic.experiment.runner import reusable

    align = Stage("align", "sft", {"a": 1})
    attack, other = Stage("finetune", "sft", {"p": 0.1}, align), Stage("finetune", "sft", {"p": 0.2}, align)
    evals = [Stage("evaluate", "sft", {"e": 1}, s) for s in (attack, other)]
    stages = [align, attack, evals[0], other, evals[1]]
    shared, store = tmp_path / "shared", tmp_path / "store"
    for s in stages:
        (shared / s.dirname).mkdir(parents=True)
        (shared / s.dirname / "DONE").write_text("")
    store.mkdir()
    assert set(reusable(stages, store, (shared,))) == {s.dirname for s in stages}
    # the runner keeps each attack search's fixed attack's parent (and its ancestors)
    assert set(reusable(stages, store, (shared,), keep=(align,))) == {s.dirname for s in stages[1:]}
    (shared / evals[1].dirname / "DONE").unlink()  # other's evaluation still to run: other and align run
    assert set(reusable(stages, store, (shared,))) == {attack.dirname, evals[0].dirname}
    (store / evals[1].dirname).mkdir()
    (store / evals[1].dirname / "DONE").write_text("")  # ... unless it is finished here
    assert set(reusable(stages, store, (shared,))) == {s.dirname for s in stages[:4]}


def test_reuse_of_a_missing_store_is_one_line_error(reference_run, tmp_path, capsys):
    path, _ = reference_run
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--output", str(tmp_path / "out"), "--reuse", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert "--reuse" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_different_experiment_in_same_directory_is_refused(reference_run, tmp_path):
    _, root = reference_run
    other = write_experiment(tmp_path / "tiny.yaml", tiny_experiment(seeds=[1]))
    with pytest.raises(ClinicError, match="holds a different experiment"):
        run_experiment(other, root)


def test_report_cli_refuses_to_overwrite(reference_run, capsys):
    _, root = reference_run
    assert main(["report", str(root)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(root), "--output", str(root / "report-2")]) == 0
    assert (root / "report-2" / "report.html").exists()


def test_repair_block_repairs_every_fine_tuned_model_and_reports_it(tmp_path, data_dir, monkeypatch):
    """A ``repair`` block adds, after each fine-tuned model, one repair stage per method and its
    evaluation; the report's repaired rows name the repair and compare with the unrepaired SFT
    fine-tune. Stages of the same file without the block keep their hashes. (A tiny random model
    writes salad: no share counts as broken here, the test is about the pairing.)"""
    from clinic.evaluation import coherence
    from clinic.report.results import collect_results

    monkeypatch.setattr(coherence, "BROKEN_SHARE", 101.0)

    base = tiny_experiment(finetune={"methods": ["sft"], "tasks": ["sst2"], "n": 8, "poison_ratios": [0.5],
                                     "train": {"batch_size": 4, "max_length": 512, "logging_steps": 1}},
                           evaluate={"base": False, "aligned": False, **tiny_experiment()["evaluate"]}, sink=None)
    exp = {**base, "repair": {"methods": ["safelora", {"name": "antidote", "n_harmful": 4, "label": "anti"}],
                              "batch_size": 4}}
    plain, repaired = Experiment.from_dict(base).plan(), Experiment.from_dict(exp).plan()
    assert [s.kind for s in repaired] == ["align", "finetune", "evaluate", "repair", "evaluate", "repair", "evaluate"]
    assert [s.hash for s in plain] == [s.hash for s in repaired if s.labels.get("repair") is None]
    assert repaired[3].parent is repaired[1] and repaired[4].parent is repaired[3]
    assert [s.labels["repair"] for s in repaired if s.kind == "repair"] == ["safelora", "anti"]
    root = run_experiment(write_experiment(tmp_path / "rep.yaml", exp), tmp_path / "rep")
    write_report(root, root / "report", overwrite=True)
    rows, _plan = collect_results(root)
    by_repair = {row.get("repair"): row for row in rows}
    assert set(by_repair) == {None, "safelora", "anti"}
    for name in ("safelora", "anti"):
        assert by_repair[name]["stage"] == "repaired" and by_repair[name]["baseline"] == "sft → sft (not repaired)"
        assert "n/a" not in by_repair[name]["ΔHS keyword [beavertails-test] vs SFT"]  # paired with the unrepaired model
    table = (root / "report" / "results.md").read_text()
    assert "| finetune | repair |" in table and "| anti |" in table
    with pytest.raises(ClinicError, match="unknown repair method 'panacia' \\(did you mean 'panacea'\\?\\)"):
        Experiment.from_dict({**base, "repair": {"methods": ["panacia"]}})
