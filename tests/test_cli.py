"""The CLI: every command end to end on a tiny model, and one-line errors with exit code 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clinic.cli import main
from clinic.errors import ClinicError


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["align", "finetune", "evaluate", "demo", "methods", "data", "sink", "run",
                                     "report", "curate", "repair"])
def test_help_explains_every_option(command):
    out = subprocess.run([sys.executable, "-m", "clinic.cli", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if command in ("align", "finetune"):
        for option in ("--model", "--method", "--output", "--lr", "--epochs", "--lora-r", "--preset", "--overwrite"):
            assert option in out.stdout
        assert "methods:" in out.stdout and "sft" in out.stdout
    expected = {"demo": "--n-align", "sink": "--mode", "curate": "--selector", "report": "--overwrite",
                "repair": "--num-layers"}
    if command in expected:  # a heavy command's own options, not the stub that `clinic --help` lists
        assert expected[command] in out.stdout


# Prints each heavy module that the top-level help imported; the CLI builds the parsers of the
# torch-importing commands only when chosen, so `clinic --help` prints none.
_HELP_IMPORTS = """
import sys
from clinic.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print("IMPORTED", sorted(m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules))
"""


def test_top_level_help_lists_every_command_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", _HELP_IMPORTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout
    for command in ("align", "finetune", "evaluate", "demo", "methods", "data", "sink", "run", "report", "curate",
                    "repair"):
        assert f"    {command} " in out.stdout
    assert "Safety-align a model" in out.stdout and "Pharmacist" in out.stdout


def test_the_chosen_command_is_the_first_word():
    from clinic.cli import chosen_command

    assert chosen_command(["align", "--model", "m", "--output", "o"]) == "align"
    assert chosen_command(["-h"]) is None and chosen_command([]) is None


def test_align_finetune_evaluate_end_to_end(tmp_path, capsys, data_dir):
    align_dir, ft_dir, eval_dir = tmp_path / "align", tmp_path / "ft", tmp_path / "eval"
    code, out, err = run_cli(capsys, "align", "--model", "tiny-random-llama", "--n", "8", "--max-steps", "2",
                             "--batch-size", "4", "--output", str(align_dir))
    assert code == 0, err
    assert (align_dir / "adapter" / "adapter_config.json").exists() and (align_dir / "DONE").exists()
    config = (align_dir / "config.yaml").read_text()
    assert "transformers" in config and "seed: 0" in config
    indices = json.loads((align_dir / "data_indices.json").read_text())
    assert len(indices["train"]["indices"]["refusals"]) == 8

    code, out, err = run_cli(capsys, "finetune", "--model", str(align_dir), "--task", "sst2", "--n", "10",
                             "--poison-ratio", "0.2", "--max-steps", "2", "--batch-size", "5", "--output", str(ft_dir))
    assert code == 0, err
    run = json.loads((ft_dir / "run.json").read_text())
    assert run["model_chain"]["base"] == "tiny-random-llama" and len(run["model_chain"]["adapters"]) == 2
    assert run["model_chain"]["adapters"] == [str(align_dir.resolve() / "adapter"), "adapter"]  # its own: relative
    indices = json.loads((ft_dir / "data_indices.json").read_text())["train"]
    assert indices["n_harmful"] == 2 and len(indices["indices"]["sst2"]) == 8
    metrics = json.loads((ft_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_seconds"] > 0

    code, out, err = run_cli(capsys, "evaluate", "--model", str(ft_dir), "--judges", "keyword", "--n-prompts", "3",
                             "--n-task", "3", "--max-new-tokens", "4", "--output", str(eval_dir))
    assert code == 0, err
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["harmful"]["beavertails-test"]["keyword"]["n"] == 3
    assert metrics["tasks"]["sst2"]["n"] == 3
    hs = metrics["harmful"]["beavertails-test"]["keyword"]
    for m, score in ((hs, "harmful_score"), (metrics["tasks"]["sst2"], "accuracy")):
        assert m["ci95"][0] <= m[score] <= m["ci95"][1] and m["ci95"][1] - m["ci95"][0] > 30  # 3 items: wide
    generations = [json.loads(line) for line in (eval_dir / "generations.jsonl").read_text().splitlines()]
    # the free-text guard answers as many benign and safe-but-scary prompts as there are harmful ones
    assert len(generations) == 12
    assert {g["set"] for g in generations} == {"beavertails-test", "sst2", "alpaca-eval", "xstest-safe"}
    # each harmful-prompt answer keeps its probability beside its flag; the graded score is their mean
    harmful = [g for g in generations if "flagged" in g]
    assert len(harmful) == 3 and all(g["flagged"]["keyword"] == (g["scores"]["keyword"] > 0.5) for g in harmful)
    assert hs["graded_score"] == pytest.approx(100 * sum(g["scores"]["keyword"] for g in harmful) / 3)
    guard = metrics["guard"]
    assert guard["alpaca-eval"]["n"] == 3 and guard["xstest-safe"]["n"] == 3
    assert guard["alpaca-eval"]["reference_nll"]["tokens"] > 0 and guard["alpaca-eval"]["reference_nll"]["nll"] > 0
    assert "harmful score [beavertails-test, keyword]" in out


def test_full_finetuning_saves_a_model(tmp_path, capsys, data_dir):
    code, _, err = run_cli(capsys, "finetune", "--model", "tiny-random-qwen2", "--task", "agnews", "--n", "4",
                           "--max-steps", "1", "--batch-size", "2", "--max-length", "1024", "--full-ft", "--output", str(tmp_path / "ft"))
    assert code == 0, err
    assert (tmp_path / "ft" / "model" / "config.json").exists()
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["model_chain"]["adapters"] == [] and run["model_chain"]["base"].endswith("model")


# Bad inputs (one-line errors, exit code 2, nothing written): tests/test_errors.py.


def test_demo_on_a_tiny_model(tmp_path, capsys, data_dir):
    from clinic.report.tables import format_delta, format_interval

    out_dir = tmp_path / "demo"
    code, out, err = run_cli(capsys, "demo", "--model", "tiny-random-llama", "--alignment", "train", "--n-align", "8",
                             "--helpful-n", "4", "--n-finetune", "10", "--finetune-epochs", "1", "--batch-size", "4", "--max-length", "256",
                             "--n-prompts", "3", "--n-task", "3", "--max-new-tokens", "4", "--judges", "keyword",
                             "--output", str(out_dir))
    assert code == 0, err
    table = (out_dir / "demo_table.md").read_text()
    for label in ("base model", "aligned (sft)", "benign fine-tune (p=0)", "harmful fine-tune (p=0.2)",
                  "harmful fine-tune (p=0.2) + surgery"):
        assert f"| {label} |" in table
    # the demo is a built-in experiment: its stages live in stages/, named by the plan
    folders = _demo_stages(out_dir)
    assert sorted(folders) == sorted([("evaluate", "base"), ("align", "aligned"), ("evaluate", "aligned"),
                                      *[(kind, f"{m}-p{p}") for m, p in (("sft", "0"), ("sft", "0.2"), ("surgery", "0.2"))
                                        for kind in ("finetune", "evaluate")]])
    assert all((folder / "DONE").exists() for folder in folders.values())
    assert (out_dir / "experiment.yaml").exists() and (out_dir / "report" / "results.md").exists()
    assert "HS keyword % [95 % CI]" in out and "(n=3 prompts, 3 sst2 rows)" in out
    assert "coherent answers to alpaca-eval % [95 % CI]" in table  # the free-text guard (issue 35)
    guard = json.loads((folders[("evaluate", "sft-p0.2")] / "metrics.json").read_text())["guard"]
    answers = guard["alpaca-eval"]
    assert answers["n"] == 3 and f"| {format_interval(answers['answer_share'], answers['ci95'])} |" in table
    run = json.loads((folders[("finetune", "surgery-p0.2")] / "run.json").read_text())
    assert run["method"] == "surgery"
    metrics = json.loads((folders[("evaluate", "sft-p0.2")] / "metrics.json").read_text())
    hs = metrics["harmful"]["beavertails-test"]["keyword"]

    assert hs["n"] == 3 and f"| {format_interval(hs['harmful_score'], hs['ci95'])} |" in table
    from clinic.evaluation.stats import paired_difference, wilson_interval

    assert hs["ci95"] == list(wilson_interval(round(hs["harmful_score"] * 3 / 100), 3))

    # the Δ cell: the harmful fine-tune against the benign one, prompt by prompt, read back from the
    # generations independently of the demo's own reading
    def flags(name):
        rows = [json.loads(line) for line in (folders[("evaluate", name)] / "generations.jsonl").read_text().splitlines()]
        return [r["flagged"]["keyword"] for r in rows if "flagged" in r]

    delta = paired_difference(flags("sft-p0.2"), flags("sft-p0")).as_dict()
    assert f"{format_delta(delta)} vs benign fine-tune (p=0)" in table
    summary = json.loads((out_dir / "demo.json").read_text())
    assert summary["models"]["harmful fine-tune (p=0.2)"]["delta_hs"]["diff"] == delta["diff"]
    assert summary["config"]["setting"] == "quick" and summary["config"]["n_align"] == 8  # the option beat the setting
    assert summary["verdict"] in table and summary["verdict"] in out
    code, _, err = run_cli(capsys, "demo", "--model", "tiny-random-llama", "--alignment", "train", "--output", str(out_dir))
    assert code == 2 and "already exists" in err
    from clinic.rundir import check_output_dir

    assert (out_dir / "clinic.json").exists()  # marked first: a later --overwrite may replace it
    assert check_output_dir(out_dir, overwrite=True) == out_dir.resolve()


def _demo_stages(out_dir):
    """``{(kind, model): folder}`` of a finished demo, from its plan: model is base, aligned, or
    ``<fine-tuning method>-p<p>``."""
    plan = json.loads((out_dir / "plan.json").read_text())
    found = {}
    for stage in plan["stages"]:
        labels = stage["labels"]
        model = labels["stage"] if labels["stage"] in ("base", "aligned") else f"{labels['finetune']}-p{labels['p']:g}"
        found[(stage["kind"], model)] = out_dir / plan["store"] / stage["dir"]
    return found


def test_demo_settings_fill_only_what_is_not_given():
    from clinic.experiment.demo import SETTINGS, DemoConfig

    quick, protocol = DemoConfig(), DemoConfig(setting="protocol", n_prompts=50)
    assert quick.n_align == SETTINGS["quick"]["n_align"] and quick.finetune_lr == SETTINGS["quick"]["finetune_lr"]
    assert protocol.n_align == 1024 and protocol.helpful_n == 512 and protocol.finetune_epochs == 5
    assert protocol.n_prompts == 50  # given: the setting does not replace it
    # the protocol setting is docs/protocol.md's cell B, configs/protocol-smollm2.yaml
    from pathlib import Path

    import yaml

    from clinic.modeling.training import PRESETS

    cell_b = yaml.safe_load((Path(__file__).parents[1] / "configs" / "protocol-smollm2.yaml").read_text())
    full = DemoConfig(setting="protocol")
    assert (cell_b["align"]["n"], cell_b["align"]["helpful_n"], cell_b["finetune"]["n"]) == (
        full.n_align, full.helpful_n, full.n_finetune)
    assert cell_b["align"]["preset"] == "protocol-align" and PRESETS.get("protocol-align")["epochs"] == full.align_epochs
    attack = PRESETS.get(cell_b["finetune"]["preset"])
    assert (attack["epochs"], attack["lr"]) == (full.finetune_epochs, full.finetune_lr)
    assert (cell_b["evaluate"]["n_prompts"], cell_b["evaluate"]["n_task"]) == (full.n_prompts, full.n_task)


def test_the_quick_demo_loads_the_protocols_alignment_and_only_with_its_settings(data_dir):
    """--alignment shipped stands in for exactly the alignment stage the demo would otherwise run:
    the quick setting's alignment settings are the shipped one's, and any change is refused."""
    from clinic.experiment.demo import DemoConfig, _check

    assert DemoConfig().alignment == "shipped" and DemoConfig(setting="protocol").alignment == "train"
    _check(DemoConfig())  # the quick setting trains nothing the shipped alignment differs from
    _check(DemoConfig(setting="protocol", alignment="shipped"))
    _check(DemoConfig(n_align=256, alignment="train"))
    for changed, field in ((dict(n_align=256), "data.n 256 (shipped: 1024)"),
                           (dict(seed=1), "train.seed 1 (shipped: 0)"),
                           (dict(align_lr=1e-4), "train.lr 0.0001 (shipped: 0.0005)"),
                           (dict(model="tiny-random-llama"), "model.base 'tiny-random-llama'"),
                           (dict(helpful=""), "data.helpful None (shipped: 'alpaca')")):
        with pytest.raises(ClinicError) as err:
            _check(DemoConfig(**changed))
        assert field in str(err.value) and "--alignment train" in str(err.value), (changed, str(err.value))


def test_the_shipped_alignment_is_the_protocols_alignment_stage():
    """The shipped files record the alignment stage that configs/protocol-smollm2.yaml plans (its
    settings, not its hash: a new setting with a neutral default changes hashes, not weights), and
    the packed adapter (tracked, ≤ 2 MiB) holds every LoRA module of SmolLM2's 30 layers at the
    recorded ranks, never above the trained rank."""
    from safetensors import safe_open

    from clinic.experiment.demo import SHIPPED_ADAPTER, SHIPPED_ALIGNMENT
    from clinic.experiment import Experiment
    from clinic.modeling.lora_pack import FORMAT

    root = Path(__file__).parents[1]
    stored = yaml.safe_load((SHIPPED_ALIGNMENT / "config.yaml").read_text())
    plan = Experiment.from_dict(yaml.safe_load((root / "configs" / "protocol-smollm2.yaml").read_text())).plan()
    align = next(s for s in plan if s.kind == "align" and s.config["train"]["seed"] == 0)
    assert stored["train"] == align.config["train"] and stored["method"] == align.config["method"]
    assert stored["method_options"] == align.config["options"] and stored["model"]["base"] == align.config["model"]
    assert {k: stored["data"][k] for k in align.config["data"]} == align.config["data"]
    shipped = json.loads((SHIPPED_ALIGNMENT / "shipped.json").read_text())
    packed = SHIPPED_ALIGNMENT / SHIPPED_ADAPTER
    assert packed.stat().st_size <= 2 * 2**20  # no tracked file above 2 MiB
    assert hashlib.sha256(packed.read_bytes()).hexdigest() == shipped["adapter"]["sha256"]
    with safe_open(str(packed), "pt") as f:
        assert f.metadata()["format"] == FORMAT
        lora = json.loads(f.metadata()["adapter_config"])
        ranks = {n[: -len(".A.q")]: f.get_slice(n).get_shape()[0] for n in f.keys() if n.endswith(".A.q")}
    assert ranks == shipped["adapter"]["ranks"]
    assert len(ranks) == 30 * len(lora["target_modules"]) and 1 <= min(ranks.values())
    assert max(ranks.values()) <= stored["train"]["lora_r"] == shipped["adapter"]["source_rank"]


def test_the_shipped_alignment_becomes_a_finished_run_the_fine_tunes_chain_from(tmp_path):
    from clinic.experiment.demo import SHIPPED_ALIGNMENT, materialise_shipped_alignment
    from clinic.modeling.chain import resolve_ref

    out = materialise_shipped_alignment(tmp_path / "align")
    assert (out / "DONE").exists() and (out / "clinic.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["align"]  # no staging folder left behind
    chain = resolve_ref(str(out), train=True)
    assert chain.base == "smollm2-135m-instruct" and chain.adapters == [str((out / "adapter").resolve())]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    shipped = json.loads((SHIPPED_ALIGNMENT / "shipped.json").read_text())
    # every module's rank reaches PEFT: the top rank as r, the others in rank_pattern, scaling 1
    ranks = shipped["adapter"]["ranks"]
    assert config["r"] == config["lora_alpha"] == max(ranks.values())
    assert config["rank_pattern"] == config["alpha_pattern"] == {
        m.removeprefix("base_model.model."): r for m, r in ranks.items() if r != config["r"]}


def test_demo_verdict_reads_the_intervals():
    from clinic.report.demo import _verdict

    def summary(low_hi_benign, low_hi_harmful, delta_ci, hs_aligned=None):
        m = lambda ci, hs=None: {"metrics": {"harmful": {"beavertails-test": {"j": {  # noqa: E731
            "ci95": ci, "harmful_score": sum(ci) / 2 if hs is None else hs}}}}}
        out = {"b": m(low_hi_benign), "h": {**m(low_hi_harmful), "delta_hs": {"diff": 30.0, "ci95": delta_ci,
                                                                              "p": 0.001}}}
        if hs_aligned is not None:
            out["a"] = m([0, 0], hs_aligned)
        return out

    assert "are the cause" in _verdict(summary([1, 10], [30, 50], [20, 40]), "j", "h", "b", 0.2)
    assert "intervals overlap" in _verdict(summary([1, 30], [25, 50], [5, 40]), "j", "h", "b", 0.2)
    assert "Within noise" in _verdict(summary([20, 40], [25, 50], [-5, 20]), "j", "h", "b", 0.2)
    assert "did not work" in _verdict(summary([20, 40], [5, 25], [-30, -5]), "j", "h", "b", 0.2)
    # the shallow-alignment sentence: only when p = 0 rose more than 10 points above the aligned model
    assert "eroded the alignment too (p=0: 30.0 % against the aligned model's 19.0 %)" in _verdict(
        summary([20, 40], [25, 50], [-5, 20], hs_aligned=19.0), "j", "h", "b", 0.2, aligned="a")
    assert "eroded" not in _verdict(summary([20, 40], [25, 50], [-5, 20], hs_aligned=20.0), "j", "h", "b", 0.2,
                                    aligned="a")
    assert "eroded" not in _verdict(summary([20, 40], [25, 50], [-5, 20]), "j", "h", "b", 0.2)


# -- one name per setting: CLI option = experiment-file key = dataclass field (issue 14) -----------

# options that are no setting of a stage's dataclass: what to read or write, and how
_RUN_OPTIONS = {"help", "model", "method", "output", "overwrite", "preset", "judge_model", "sink_every", "command",
                "func", "method_options", "verbose", "quiet"}


def _settings_classes():
    from clinic.stages.curate import CurateConfig
    from clinic.experiment.demo import DemoConfig
    from clinic.modeling.training import TrainConfig
    from clinic.methods.registry import methods_for
    from clinic.stages.evaluate import EvalConfig
    from clinic.repair import RepairConfig, repair_methods
    from clinic.sink.config import SinkConfig

    stages = {stage: [TrainConfig, *{spec.config for spec in methods_for(stage).values()}] for stage in ("align", "finetune")}
    return {**stages, "evaluate": [EvalConfig], "curate": [CurateConfig], "sink": [SinkConfig], "demo": [DemoConfig],
            "repair": [RepairConfig, *{spec.config for spec in repair_methods().values()}]}


# the execution settings each command takes (fields of clinic.experiment.blocks.ExecutionConfig)
_EXECUTION = {"align": ["device", "report_to"], "finetune": ["device", "report_to"],
              "evaluate": ["device", "dtype", "generation_batch", "vllm_mode", "tensor_parallel", "enforce_eager"],
              "curate": ["device", "dtype"], "sink": ["device", "dtype"], "demo": ["device", "dtype"],
              "repair": ["device", "dtype"]}


@pytest.mark.parametrize("command", ["align", "finetune", "evaluate", "curate", "sink", "demo", "repair"])
def test_every_setting_has_exactly_one_option_of_its_own_name(command):
    import dataclasses

    from clinic.cli import command_parser
    from clinic.cli.train import DATA_FIELDS

    parser = command_parser(command)
    actions = [a for a in parser._actions if a.option_strings]
    for action in actions:  # every spelling of an option is its setting's name (or --no-NAME for a bool)
        for option in action.option_strings:
            name = option.lstrip("-").replace("-", "_")
            assert name in (action.dest, f"no_{action.dest}") or option in ("-h", "-v", "-q"), (option, action.dest)
    fields = {f.name for cls in _settings_classes()[command] for f in dataclasses.fields(cls) if f.init}
    fields |= set(DATA_FIELDS.get(command, ())) | set(_EXECUTION[command])
    for name in fields:
        flag = "--" + name.replace("_", "-")
        owners = [a for a in actions if flag in a.option_strings]
        assert len(owners) == 1 and owners[0].dest == name, (name, [a.option_strings for a in owners])
    assert {a.dest for a in actions} <= fields | _RUN_OPTIONS  # no option outside the settings


def test_the_sink_settings_are_run_sink_analysis_keywords():
    import dataclasses
    import inspect

    from clinic.stages.sink import run_sink_analysis
    from clinic.sink.config import SinkConfig

    params = inspect.signature(run_sink_analysis).parameters
    for f in dataclasses.fields(SinkConfig):
        assert f.name in params and params[f.name].default == f.default, f.name


@pytest.mark.parametrize(("command", "old", "value", "field", "parsed"), [
    ("evaluate", "--harmful-prompts", "advbench,harmbench", "harmful_sets", ["advbench", "harmbench"]),
    ("evaluate", "--rule", "exact", "task_rule", "exact"),
    ("align", "--data", "my.jsonl", "source", "my.jsonl"),
    ("finetune", "--data", "my.jsonl", "source", "my.jsonl"),
    ("finetune", "--harmful-data", "advbench", "harmful_source", "advbench"),
    ("align", "--harmful-data", "advbench", "harmful_source", "advbench"),  # one name: the methods' harmful stream
    ("curate", "--data", "my.jsonl", "source", "my.jsonl"),
    ("curate", "--harmful-data", "advbench", "harmful_source", "advbench"),
    ("sink", "--sink-mode", "most_attended", "mode", "most_attended"),
])
def test_old_option_spellings_still_work_with_one_warning_line(capsys, command, old, value, field, parsed):
    from clinic.cli import command_parser

    for argv in ([old, value], [f"{old}={value}"]):
        args = command_parser(command).parse_args(["--model", "m", "--output", "o", *argv])
        assert getattr(args, field) == parsed
        new = "--" + field.replace("_", "-")
        assert capsys.readouterr().err == f"clinic: warning: {old} is deprecated, use {new}\n"
    command_parser(command).parse_args(["--model", "m", "--output", "o", new, value])
    assert capsys.readouterr().err == ""  # the current spelling: no warning


def test_a_training_option_left_unset_keeps_the_presets_value():
    import dataclasses

    from clinic.cli import command_parser
    from clinic.cli.options import values
    from clinic.modeling.training import PRESETS, TrainConfig, train_config

    names = [f.name for f in dataclasses.fields(TrainConfig)]

    def config(*argv):
        args = command_parser("align").parse_args(["--model", "m", "--output", "o", "--preset", "booster-align", *argv])
        return train_config(args.preset, **values(args, names))

    preset = PRESETS["booster-align"]
    assert config().lr == preset["lr"] and config().lora_r == preset["lora_r"] and config().bf16 is True
    assert config("--lr", "1e-3").lr == 1e-3 and config("--lr", "1e-3").lora_r == preset["lora_r"]
    assert config("--no-bf16").bf16 is False and config("--bf16", "false").bf16 is False
    assert config("--lora-r", "8").lora_r == 8  # the class's default, given: it wins over the preset


def test_comma_separated_lists_and_their_defaults():
    import dataclasses

    from clinic.cli import command_parser
    from clinic.cli.options import values
    from clinic.stages.evaluate import EvalConfig

    def config(*argv):
        args = command_parser("evaluate").parse_args(["--model", "m", "--output", "o", *argv])
        return EvalConfig(**values(args, [f.name for f in dataclasses.fields(EvalConfig)]))

    assert config().judges == EvalConfig().judges and config().harmful_sets == ["beavertails-test"]
    assert config("--judges", "keyword, harm-ce").judges == ["keyword", "harm-ce"]
    assert config("--tasks", "").tasks == []


def _imported_modules(path, package: tuple[str, ...]):
    """Every module ``path`` imports (relative imports resolved against ``package``)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_nothing_below_the_cli_imports_it():
    from pathlib import Path

    import clinic

    root = Path(clinic.__file__).parent
    for path in root.rglob("*.py"):
        if root / "cli" in path.parents:
            continue
        package = path.relative_to(root.parent).parent.parts
        for module in _imported_modules(path, package):
            assert module != "clinic.cli" and not module.startswith("clinic.cli."), (path, module)


def test_without_the_shipped_weights_the_demo_trains_that_alignment(tmp_path, capsys, data_dir, monkeypatch):
    """A checkout with the shipped record but without its packed weights (a deleted or filtered
    file): --alignment shipped then trains the alignment stage its settings describe, and says so."""
    import clinic.experiment.demo as demo

    monkeypatch.setattr(demo, "check_shipped_alignment", lambda *a, **k: None)  # a tiny model stands in
    monkeypatch.setattr(demo, "shipped_weights_present", lambda *a, **k: False)
    code, out, err = run_cli(capsys, "demo", "--model", "tiny-random-llama", "--alignment", "shipped", "--n-align", "8",
                             "--helpful-n", "4", "--n-finetune", "10", "--finetune-epochs", "1", "--batch-size", "4",
                             "--n-prompts", "3", "--n-task", "3", "--max-new-tokens", "4", "--judges", "keyword",
                             "--defence", "", "--base", "false", "--output", str(tmp_path / "demo"))
    assert code == 0, err
    assert "are not in" in out and "training it instead" in out
    assert (_demo_stages(tmp_path / "demo")[("align", "aligned")] / "train_log.jsonl").exists()  # trained, not copied
    assert "| aligned (sft) |" in (tmp_path / "demo" / "demo_table.md").read_text()


def test_quiet_keeps_only_warnings_and_verbose_adds_debug(tmp_path, capsys, data_dir):
    """clinic's messages go through logging (progress and results on stdout, warnings on stderr):
    --quiet leaves the warnings, the default prints the results too."""
    argv = ["evaluate", "--model", "tiny-random-llama", "--judges", "keyword", "--n-prompts", "2", "--n-task", "0",
            "--max-new-tokens", "2", "--harmful-prompts", "beavertails-test"]  # an old spelling: one warning
    assert main([*argv, "--quiet", "--output", str(tmp_path / "q")]) == 0
    quiet = capsys.readouterr()
    assert "evaluation written to" not in quiet.out and "is deprecated" in quiet.err
    assert main([*argv, "--output", str(tmp_path / "n")]) == 0
    assert "evaluation written to" in capsys.readouterr().out
    import logging

    logging.getLogger("clinic").debug("not shown")
    assert "not shown" not in capsys.readouterr().out
