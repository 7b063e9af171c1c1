"""Hard edges: every bad input through the real CLI gives exit code 2, one line on stderr naming the
problem, and writes nothing (no output directory, no ``.<name>.partial-*`` staging folder).

One table, :data:`CASES`. Inputs a case needs are written by its ``setup`` into ``{in}``; the
output goes to ``{out}`` (appended as ``--output {out}`` unless the argv has an ``--output``). Regenerate
docs/errors.md from the actual messages with ``python tests/test_errors.py > docs/errors.md``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from clinic.cli import main


@dataclass
class Bad:
    id: str
    what: str  # the bad input, in words (docs/errors.md)
    argv: list[str]  # "{in}": the inputs folder, "{out}": the output directory
    message: str  # part of the one-line error
    setup: Callable[[Path], None] | None = None  # writes the case's input files into {in}
    root_ok: bool = True  # False: root ignores file permissions, the case is skipped as root

    def args(self, inputs: Path, out: Path) -> list[str]:
        argv = [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in self.argv]
        return argv if "--output" in argv else argv + ["--output", str(out)]


def _write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        target = inputs / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)

    return setup


def _incomplete_run(inputs: Path) -> None:  # a run directory killed before its DONE marker
    run = inputs / "killed-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"stage": "align", "model_chain": {"base": "tiny-random-llama", "adapters": []}}))


def _existing_output(inputs: Path) -> None:
    (inputs / "taken").mkdir()
    (inputs / "taken" / "keep.txt").write_text("mine")


def _read_only_parent(inputs: Path) -> None:
    (inputs / "locked").mkdir()
    (inputs / "locked").chmod(0o500)


QA = '{"prompt": "how?", "response": "like so."}\n'
TINY = ["--model", "tiny-random-llama"]
FT = ["finetune", *TINY, "--task", "sst2", "--n", "10"]
DEMO = ["demo", *TINY, "--alignment", "train"]  # the shipped alignment is SmolLM2's: refused first on a tiny model

CASES: list[Bad] = [
    # data
    Bad("missing-data-file", "a data file that does not exist", ["align", *TINY, "--source", "{in}/nope.jsonl"],
        "nope.jsonl does not exist"),
    Bad("unknown-dataset", "a dataset name that is neither a named dataset nor a file", ["align", *TINY, "--source", "refusal"],
        "unknown dataset 'refusal' (did you mean 'refusals'?): not a file, and not one of"),
    Bad("malformed-jsonl", "a .jsonl file with a broken line", ["align", *TINY, "--source", "{in}/bad.jsonl"],
        "bad.jsonl row 2: not valid JSON", _write("bad.jsonl", QA + '{"prompt": "x", "response": \n')),
    Bad("wrong-column-mapping", "a column mapping naming a column the file lacks",
        ["align", *TINY, "--source", "{in}/qa.jsonl", "--columns", "prompt=question,response=reply"],
        "qa.jsonl row 1: missing column 'reply'", _write("qa.jsonl", '{"question": "q", "answer": "a"}\n')),
    Bad("malformed-column-mapping", "a column mapping that is not field=column",
        ["align", *TINY, "--source", "{in}/qa.jsonl", "--columns", "prompt"], "must look like field=column",
        _write("qa.jsonl", QA)),
    Bad("empty-dataset", "an empty data file", ["finetune", *TINY, "--source", "{in}/empty.jsonl"],
        "the dataset is empty", _write("empty.jsonl", "")),
    Bad("unknown-task", "a task that does not exist", ["finetune", *TINY, "--task", "imdb", "--n", "10"],
        "unknown task 'imdb'"),
    Bad("unknown-prompt-set", "a harmful prompt set that does not exist",
        ["evaluate", *TINY, "--harmful-sets", "jailbreaks-2099", "--judges", "keyword"], "unknown dataset 'jailbreaks-2099'"),
    Bad("p-negative", "a poison ratio below 0", [*FT, "--poison-ratio", "-0.1"], "within [0, 1], got -0.1"),
    Bad("p-above-one", "a poison ratio above 1", [*FT, "--poison-ratio", "1.5"], "within [0, 1], got 1.5"),
    Bad("n-not-positive", "a sample count of 0", ["finetune", *TINY, "--task", "sst2", "--n", "0"],
        "sample count n must be a positive integer"),
    Bad("n-above-available", "more task samples than exist",
        ["finetune", *TINY, "--task", "sst2", "--n", "999999", "--poison-ratio", "0.5"], "are available"),
    Bad("n-above-available-align", "more alignment samples than exist", ["align", *TINY, "--n", "100000"], "are available"),
    Bad("helpful-without-n", "--helpful without --helpful-n", ["align", *TINY, "--n", "4", "--helpful", "alpaca"],
        "--helpful and --helpful-n go together"),
    Bad("n-prompts-above-available", "more evaluation prompts than the set holds",
        ["evaluate", *TINY, "--harmful-sets", "advbench", "--n-prompts", "5000", "--judges", "keyword"], "only 520"),
    Bad("split-without-validation", "a validation split of a prompt set that has none",
        ["evaluate", *TINY, "--harmful-sets", "advbench", "--split", "validation", "--judges", "keyword"],
        "'advbench' has no validation split"),
    Bad("split-unknown", "an evaluation split that does not exist",
        ["evaluate", *TINY, "--split", "train", "--judges", "keyword"], "split"),
    # models
    Bad("model-path-missing", "a model path that does not exist", ["align", "--model", "./missing-model", "--n", "4"],
        "model './missing-model' not found"),
    Bad("model-dir-without-config", "a model directory without config.json", ["align", "--model", "{in}/empty-model"],
        "has no config.json", _write("empty-model/README", "not a model")),
    Bad("gguf-garbage", "a .gguf file that is not a GGUF model", ["align", "--model", "{in}/x.gguf", "--n", "4"],
        "is not a GGUF model file", _write("x.gguf", os.urandom(64) + b"not a model")),
    Bad("model-plain-file", "a model path that is a plain file", ["align", "--model", "{in}/weights.bin", "--n", "4"],
        "expected a model directory", _write("weights.bin", b"\x00" * 16)),
    Bad("incomplete-run-dir", "evaluating a run directory without its DONE marker (a killed stage)",
        ["evaluate", "--model", "{in}/killed-run", "--judges", "keyword"], "is incomplete (no DONE marker)",
        _incomplete_run),
    # methods and settings
    Bad("unknown-method", "a method that does not exist", ["align", *TINY, "--method", "nosuch"],
        "unknown align method 'nosuch'"),
    Bad("stage-mismatch", "an alignment method used for fine-tuning", [*FT, "--method", "vaccine"],
        "'vaccine' is an align method, not a finetune method"),
    Bad("option-of-another-method", "an option of another method", ["align", *TINY, "--method", "sft", "--rho", "2"],
        "option --rho does not apply to method 'sft'"),
    Bad("option-typo", "a misspelt option", ["align", *TINY, "--learning-rate", "1e-4"],
        "unrecognized arguments: --learning-rate"),
    Bad("option-near-miss", "a misspelt option close to a real one", ["align", *TINY, "--lora-rank", "4"],
        "unrecognized arguments: --lora-rank 4 (did you mean '--lora-r'?)"),
    Bad("command-typo", "a misspelt command", ["algin", *TINY], "unknown command 'algin' (did you mean 'align'?)"),
    Bad("unknown-preset", "a preset that does not exist", ["align", *TINY, "--preset", "fast"], "unknown preset 'fast'"),
    Bad("bad-schedule", "a learning-rate schedule that does not exist", ["align", *TINY, "--schedule", "cosin"],
        "unknown schedule 'cosin' (did you mean 'cosine'?)"),
    Bad("negative-lr", "a negative learning rate", ["align", *TINY, "--lr", "-0.0001"],
        "training setting lr must be above 0, got -0.0001"),
    Bad("zero-batch-size", "a batch size of 0", ["align", *TINY, "--batch-size", "0"], "must be at least 1"),
    Bad("bad-method-option", "a method option out of range", ["align", *TINY, "--method", "vaccine", "--rho", "-1"],
        "rho must be non-negative"),
    # evaluation
    Bad("unknown-judge", "a judge that does not exist", ["evaluate", *TINY, "--judges", "vibes"], "unknown judge 'vibes'"),
    Bad("judge-weights-missing", "a BeaverDam judge whose weights are not at the given path",
        ["evaluate", *TINY, "--judges", "beaverdam", "--judge-model", "beaverdam={in}/beaver-dam-7b"],
        "beaverdam judge: model weights not found"),
    Bad("llamaguard-weights-missing", "a Llama Guard judge whose weights are not at the given path",
        ["evaluate", *TINY, "--judges", "llamaguard", "--judge-model", "llamaguard={in}/llama-guard"],
        "llamaguard judge: model weights not found"),
    Bad("judge-model-not-judged", "a judge model path for a judge that is not used",
        ["evaluate", *TINY, "--judges", "keyword", "--judge-model", "beaverdam={in}/bd"],
        "--judge-model names beaverdam, which is not among --judges"),
    Bad("scores-from-not-a-run", "curation scores to reuse from a folder that is no finished curation run",
        ["curate", *TINY, "--n-candidates", "12", "--n-validation", "4", "--scores-from", "{in}"],
        "not a finished curation run"),
    Bad("unscored-task", "an accuracy task without a scoring rule", ["evaluate", *TINY, "--tasks", "alpaca"],
        "no accuracy rule"),
    Bad("unknown-backend", "a generation backend that does not exist", ["evaluate", *TINY, "--backend", "tgi"],
        "unknown backend 'tgi'; choose one of hf, vllm"),
    # output
    Bad("output-exists", "an output directory that exists (no --overwrite)", ["align", *TINY, "--output", "{in}/taken"],
        "already exists (pass --overwrite to replace it)", _existing_output),
    Bad("output-read-only", "an output directory whose parent is read-only",
        ["align", *TINY, "--output", "{in}/locked/run"], "is not writable", _read_only_parent, root_ok=False),
    Bad("output-unwritable-fs", "an output directory on a file system nothing can write to",
        ["align", *TINY, "--output", "/proc/clinic-run"], "is not writable"),
]

# `clinic run bad.yaml` cases (experiment files) are appended here: Bad(..., argv=["run", "{in}/bad.yaml", ...],
# setup=_write("bad.yaml", "...")).
_EXP = "model: tiny-random-llama\nalign: {methods: [sft], n: 4}\nfinetune: {n: 4, poison_ratios: [0.1]}\n"


def _exp(extra: str, base: str = _EXP) -> Callable[[Path], None]:
    return _write("bad.yaml", base + extra)


EXPERIMENT_CASES: list[Bad] = [
    Bad("experiment-missing", "an experiment file that does not exist", ["run", "{in}/none.yaml"], "does not exist"),
    Bad("experiment-not-yaml", "an experiment file that is not YAML", ["run", "{in}/bad.yaml"], "is not valid YAML",
        _write("bad.yaml", "align: [sft\n")),
    Bad("experiment-key-typo", "a typo in an experiment key", ["run", "{in}/bad.yaml"],
        "unknown key 'evalute' in the experiment file (did you mean 'evaluate'?)", _exp("evalute: {n_prompts: 4}\n")),
    Bad("experiment-nested-typo", "a typo in a key inside a block", ["run", "{in}/bad.yaml"],
        "unknown key 'poison_ratio' in finetune block 1 (did you mean 'poison_ratios'?)",
        _exp("", "model: tiny-random-llama\nfinetune: {n: 4, poison_ratio: [0.1]}\n")),
    Bad("experiment-unknown-method", "an unknown method in an experiment", ["run", "{in}/bad.yaml"], "vacine",
        _exp("", "model: tiny-random-llama\nalign: {methods: [vacine]}\n")),
    Bad("experiment-p-outside", "a poison ratio above 1 in an experiment", ["run", "{in}/bad.yaml"], "1.2",
        _exp("", "model: tiny-random-llama\nfinetune: {n: 4, poison_ratios: [0.1, 1.2]}\n")),
    Bad("experiment-unknown-judge", "an unknown judge in an experiment", ["run", "{in}/bad.yaml"], "unknown judge 'gpt4'",
        _exp("evaluate: {judges: [keyword, gpt4]}\n")),
    Bad("experiment-method-option", "an option the method does not have", ["run", "{in}/bad.yaml"], "rhoo",
        _exp("", "model: tiny-random-llama\nalign: {methods: [{name: vaccine, rhoo: 2}]}\n")),
]



# --------------------------------------------------------------------------------------------
# Round two (issue 17): destructive outputs, silently wrong settings, experiment files, every
# accepted data format read when damaged, model and run directories, every numeric option.


def _setups(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        for step in steps:
            step(inputs)

    return setup


def _run_dir(name: str, stage: str = "align", adapters=("adapter",), done: bool = True, record: str | None = None,
             marker: bool = True) -> Callable[[Path], None]:
    """A finished (or not) clinic run directory: marker, run.json, DONE and an adapter folder."""

    def setup(inputs: Path) -> None:
        run = inputs / name
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        if marker:
            (run / "clinic.json").write_text('{"written_by": "clinic"}')
        chain = {"base": "tiny-random-llama", "adapters": list(adapters)}
        (run / "run.json").write_text(record if record is not None else json.dumps({"stage": stage, "model_chain": chain}))
        if done:
            (run / "DONE").write_text("")

    return setup


def _model_dir(name: str, config: str | None = '{"model_type": "llama"}', tokenizer: bool = True,
               weights: bytes | None = None) -> Callable[[Path], None]:
    """A model folder missing or breaking one of its parts."""

    def setup(inputs: Path) -> None:
        folder = inputs / name
        folder.mkdir()
        if config is not None:
            (folder / "config.json").write_text(config)
        if tokenizer:
            (folder / "tokenizer.json").write_text("{}")
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)

    return setup


def _parquet(name: str, rows: list[dict], cut: int | None = None) -> Callable[[Path], None]:
    """A Parquet file of ``rows``; ``cut``: only its first bytes (a damaged footer)."""

    def setup(inputs: Path) -> None:
        import pandas as pd

        target = inputs / name
        pd.DataFrame(rows).to_parquet(target)
        if cut is not None:
            target.write_bytes(target.read_bytes()[:cut])

    return setup


def _unreadable(name: str) -> Callable[[Path], None]:
    def setup(inputs: Path) -> None:
        (inputs / name).write_text(QA)
        (inputs / name).chmod(0o000)

    return setup


ALIGN_DATA = ["align", *TINY, "--source"]
_GOOD_PQ = [{"prompt": "how?", "response": "like so."}]

DESTRUCTIVE_CASES: list[Bad] = [
    Bad("overwrite-user-folder", "--overwrite naming a folder clinic did not write (the user's data and notes)",
        ["align", *TINY, "--output", "{in}/taken", "--overwrite"], "was not written by clinic (no clinic.json)",
        _existing_output),
    Bad("overwrite-file", "--overwrite naming an existing file (refused before training, not after)",
        ["align", *TINY, "--output", "{in}/notes.txt", "--overwrite"], "is a file, not a run directory",
        _write("notes.txt", "mine")),
    Bad("overwrite-input-run", "finetune --output naming the run it reads (--overwrite)",
        ["finetune", "--model", "{in}/run", "--task", "sst2", "--n", "4", "--output", "{in}/run", "--overwrite"],
        "is or holds the input", _run_dir("run")),
    Bad("overwrite-input-holder", "an output that holds the input run (--overwrite would delete it)",
        ["finetune", "--model", "{in}/exp/run", "--task", "sst2", "--n", "4", "--output", "{in}/exp", "--overwrite"],
        "is or holds the input", _setups(_run_dir("exp/run"), _write("exp/clinic.json", "{}"))),
    Bad("overwrite-chain-run", "an output naming an earlier run of the input's chain (--overwrite)",
        ["finetune", "--model", "{in}/ft", "--task", "sst2", "--n", "4", "--output", "{in}/al", "--overwrite"],
        "is or holds the input", lambda i: (_run_dir("al")(i), _run_dir("ft", adapters=(str(i / "al" / "adapter"), "adapter"))(i))),
    Bad("evaluate-overwrite-input", "evaluate --output naming the run it evaluates (--overwrite)",
        ["evaluate", "--model", "{in}/run", "--judges", "keyword", "--output", "{in}/run", "--overwrite"],
        "is or holds the input", _run_dir("run")),
    Bad("sink-overwrite-input", "sink --output naming the run it analyses (--overwrite)",
        ["sink", "--model", "{in}/run", "--output", "{in}/run", "--overwrite"], "is or holds the input", _run_dir("run")),
    Bad("demo-overwrite-user-folder", "demo --overwrite naming a folder clinic did not write",
        ["demo", "--output", "{in}/taken", "--overwrite"], "was not written by clinic", _existing_output),
    Bad("report-overwrite-experiment", "report --output naming the experiment directory itself (--overwrite)",
        ["report", "{in}/exp", "--output", "{in}/exp", "--overwrite"], "is or holds the input",
        _setups(_write("exp/clinic.json", "{}"), _write("exp/plan.json", '{"name": "x", "model": "m", "store": "stages", "stages": []}'))),
]

SILENT_CASES: list[Bad] = [
    Bad("epochs-zero", "--epochs 0 (a 'finished' run of 0 steps)", ["align", *TINY, "--epochs", "0"], "epochs must be positive"),
    Bad("max-steps-zero", "--max-steps 0", ["align", *TINY, "--max-steps", "0"], "max_steps must be a positive step count"),
    Bad("judges-empty", "--judges '' (an evaluation without scores)", ["evaluate", *TINY, "--judges", ""], "no judges given"),
    Bad("prompt-sets-empty", "--harmful-sets '' (nothing to score)", ["evaluate", *TINY, "--harmful-sets", ""],
        "no harmful prompt sets given"),
    Bad("columns-with-task", "--columns together with --task (the mapping would be ignored)",
        [*FT, "--columns", "prompt=q,response=a"], "does not apply to --task"),
    Bad("columns-with-named-data", "--columns for a named dataset (it has its own columns)",
        ["align", *TINY, "--columns", "prompt=q,response=a"], "is a named dataset with its own columns"),
    Bad("task-and-data", "--task and --source together (one would be ignored)",
        [*FT, "--source", "{in}/qa.jsonl"], "not both", _write("qa.jsonl", QA)),
    Bad("evaluate-run-as-model", "an evaluation run passed as --model to finetune (it is not a model)",
        ["finetune", "--model", "{in}/eval", *FT[3:]], "is the run of the evaluate stage, not a model", _run_dir("eval", stage="evaluate")),
    Bad("sink-every-negative", "--sink-every below 0", [*FT, "--sink-every", "-1"], "--sink-every must be 0"),
]

_TRAIN = "model: tiny-random-llama\nalign: {methods: [sft], n: 4}\n"
_ATTACK = "model: tiny-random-llama\nalign: {{methods: [sft], n: 4}}\nfinetune: {{n: 4, poison_ratios: [0.1], {}}}\n"
EXPERIMENT_CASES_2: list[Bad] = [
    Bad("experiment-duplicate-key", "an experiment file with the same top-level key twice", ["run", "{in}/bad.yaml"],
        "key 'finetune' is given twice (lines 3 and 4)", _exp("finetune: {n: 8}\n")),
    Bad("experiment-duplicate-nested-key", "a key given twice inside a block", ["run", "{in}/bad.yaml"],
        "key 'n' is given twice", _exp("", "model: tiny-random-llama\nalign: {methods: [sft], n: 4, n: 8}\n")),
    Bad("experiment-lr-text", "a learning rate that is no number", ["run", "{in}/bad.yaml"],
        "train in align lr must be a number, got 'fast'", _exp("", _TRAIN.replace("n: 4", "n: 4, train: {lr: fast}"))),
    Bad("experiment-lr-nan", "a learning rate of .nan", ["run", "{in}/bad.yaml"], "lr must be a finite number",
        _exp("", _TRAIN.replace("n: 4", "n: 4, train: {lr: .nan}"))),
    Bad("experiment-align-list", "a list where the align mapping belongs", ["run", "{in}/bad.yaml"],
        "align must be a mapping, got list", _exp("", "model: tiny-random-llama\nalign: [sft]\n")),
    Bad("experiment-evaluate-list", "a list where the evaluate mapping belongs", ["run", "{in}/bad.yaml"],
        "evaluate must be a mapping, got list", _exp("evaluate: [keyword]\n")),
    Bad("experiment-train-list", "a list where a train mapping belongs", ["run", "{in}/bad.yaml"],
        "train in align must be a mapping", _exp("", _TRAIN.replace("n: 4", "n: 4, train: [1]"))),
    Bad("experiment-train-key-typo", "a typo in a training setting (keys: TrainConfig fields)", ["run", "{in}/bad.yaml"],
        "unknown key 'epoch' in train in align (did you mean 'epochs'?)",
        _exp("", _TRAIN.replace("n: 4", "n: 4, train: {epoch: 2}"))),
    Bad("experiment-sink-key-typo", "a typo in a sink setting (keys: SinkConfig fields)", ["run", "{in}/bad.yaml"],
        "unknown key 'harmless_sorce' in sink (did you mean 'harmless_source'?)", _exp("sink: {harmless_sorce: refusals}\n")),
    Bad("experiment-file-list", "an experiment file that is a list, not a mapping", ["run", "{in}/bad.yaml"],
        "the experiment file must be a mapping", _write("bad.yaml", "- align\n- finetune\n")),
    Bad("experiment-seed-text", "a seed that is no number", ["run", "{in}/bad.yaml"], "seeds item must be a number, got 'a'",
        _exp("seeds: [0, a]\n")),
    Bad("experiment-seed-negative", "a negative seed", ["run", "{in}/bad.yaml"], "seeds item must be within", _exp("seeds: [-1]\n")),
    Bad("experiment-n-text", "a sample count that is no number", ["run", "{in}/bad.yaml"], "finetune block 1 n must be a number",
        _exp("", "model: tiny-random-llama\nfinetune: {n: many}\n")),
    Bad("experiment-n-fraction", "a sample count that is not whole", ["run", "{in}/bad.yaml"], "align n must be a whole number",
        _exp("", "model: tiny-random-llama\nalign: {methods: [sft], n: 4.5}\n")),
    Bad("experiment-helpful-without-n", "align helpful without helpful_n", ["run", "{in}/bad.yaml"],
        "align helpful and helpful_n go together", _exp("", _TRAIN.replace("n: 4", "n: 4, helpful: alpaca"))),
    Bad("experiment-p-text", "a poison ratio that is no number", ["run", "{in}/bad.yaml"],
        "poison_ratios item must be a number, got 'high'", _exp("", "model: tiny-random-llama\nfinetune: {poison_ratios: [high]}\n")),
    Bad("experiment-sink-mode", "an invalid sink mode (refused in the plan, before align runs)", ["run", "{in}/bad.yaml"],
        "unknown sink mode 'peak'", _exp("sink: {mode: peak}\n")),
    Bad("experiment-sink-n", "a sink sample count of 0", ["run", "{in}/bad.yaml"], "sink setting n must be at least 1", _exp("sink: {n: 0}\n")),
    Bad("experiment-sink-batch-text", "a sink batch size that is no number", ["run", "{in}/bad.yaml"],
        "sink batch_size must be a number", _exp("sink: {batch_size: big}\n")),
    Bad("experiment-eval-n-text", "an evaluation count that is no number", ["run", "{in}/bad.yaml"],
        "evaluate n_prompts must be a number", _exp("evaluate: {n_prompts: all}\n")),
    Bad("experiment-judges-empty", "an empty judge list", ["run", "{in}/bad.yaml"], "no judges given", _exp("evaluate: {judges: []}\n")),
    Bad("experiment-label-slash", "a method label holding '/' (it names a folder)", ["run", "{in}/bad.yaml"],
        "label 'a/b' cannot name a folder", _exp("", "model: tiny-random-llama\nalign: {methods: [{name: sft, label: a/b}]}\n")),
    Bad("experiment-name-slash", "an experiment name that escapes its folder", ["run", "{in}/bad.yaml"],
        "experiment name '../elsewhere' cannot name a folder", _exp("name: ../elsewhere\n")),
    Bad("experiment-method-dot", "a method name starting with a dot", ["run", "{in}/bad.yaml"], "cannot name a folder",
        _exp("", "model: tiny-random-llama\nalign: {methods: [.hidden]}\n")),
    Bad("experiment-model-number", "a model that is a number", ["run", "{in}/bad.yaml"], "model must be text",
        _exp("", "model: 135\n")),
    Bad("experiment-option-list", "a method option given a list", ["run", "{in}/bad.yaml"], "must be single values",
        _exp("", "model: tiny-random-llama\nalign: {methods: [{name: vaccine, rho: [1, 2]}]}\n")),
    Bad("experiment-option-text", "a method option that is no number", ["run", "{in}/bad.yaml"],
        "vaccine option rho must be a number", _exp("", "model: tiny-random-llama\nalign: {methods: [{name: vaccine, rho: big}]}\n")),
    Bad("experiment-is-folder", "an experiment file that is a folder", ["run", "{in}/exp.yaml"], "is not a file",
        lambda i: (i / "exp.yaml").mkdir()),
    Bad("experiment-binary", "an experiment file that is not text", ["run", "{in}/bad.yaml"], "is not UTF-8 text",
        _write("bad.yaml", b"\xff\xfe\x00binary")),
    Bad("experiment-output-file", "an experiment --output that is a file", ["run", "{in}/ok.yaml", "--output", "{in}/x"],
        "is a file", _setups(_write("ok.yaml", _EXP), _write("x", "mine"))),
    Bad("attack-space-typo", "a typo in an attack-space setting", ["run", "{in}/bad.yaml"],
        "unknown key 'lrr' in attack_space in finetune block 1 (did you mean 'lr'?)",
        _exp("", _ATTACK.format("attack_space: {lrr: [1e-4]}"))),
    Bad("attack-space-text", "an attack-space learning rate that is no number", ["run", "{in}/bad.yaml"],
        "attack_space in finetune block 1 lr item must be a number, got 'fast'",
        _exp("", _ATTACK.format("attack_space: {lr: [1e-4, fast]}"))),
    Bad("attack-space-scalar", "an attack-space setting given one value, not a list", ["run", "{in}/bad.yaml"],
        "attack_space in finetune block 1 epochs must be a non-empty list or a range",
        _exp("", _ATTACK.format("attack_space: {epochs: 3}"))),
    Bad("attack-space-p-outside", "an attack-space poison ratio above 1", ["run", "{in}/bad.yaml"],
        "poison_ratio item must be within [0, 1], got 1.5", _exp("", _ATTACK.format("attack_space: {poison_ratio: [0.1, 1.5]}"))),
    Bad("attack-space-range-step", "an attack-space range with step 0", ["run", "{in}/bad.yaml"],
        "a range needs low <= high and a positive step",
        _exp("", _ATTACK.format("attack_space: {lora_r: {low: 8, high: 32, step: 0}}"))),
    Bad("attack-space-two-fixed-p", "poison_ratio in the attack space and two fixed poison ratios", ["run", "{in}/bad.yaml"],
        "poison_ratios names the fixed attack's ratio and must hold one value",
        _exp("", _ATTACK.format("attack_space: {poison_ratio: [0.2]}").replace("[0.1]", "[0.1, 0.2]"))),
    Bad("attack-search-no-space", "a search without an attack space", ["run", "{in}/bad.yaml"],
        "search in finetune block 1 needs an attack_space", _exp("", _ATTACK.format("search: {budget: 4}"))),
    Bad("attack-search-budget", "a search budget of 0", ["run", "{in}/bad.yaml"], "search in finetune block 1 budget must be at least 1",
        _exp("", _ATTACK.format("attack_space: {lr: [1e-4]}, search: {budget: 0}"))),
    Bad("attack-search-judge", "a search judge the evaluation does not run", ["run", "{in}/bad.yaml"],
        "search judge 'harm-ce' in finetune block 1 is not one of the evaluation's judges (keyword)",
        _exp("evaluate: {judges: [keyword]}\n", _ATTACK.format("attack_space: {lr: [1e-4]}, search: {budget: 2, judge: harm-ce}"))),
    Bad("report-guard-fa", "report --guard-fa above 100", ["report", "{in}/exp", "--guard-fa", "150"],
        "the guard's accuracy floor must be within [0, 100] (percent), got 150.0"),
    Bad("report-guard-points", "report --guard-points below 0", ["report", "{in}/exp", "--guard-points", "-1"],
        "the guard's points must be a non-negative number, got -1.0"),
    Bad("report-sample-flags-zero", "report --sample-flags 0", ["report", "{in}/exp", "--sample-flags", "0"],
        "--sample-flags must be at least 1 (answers to read per evaluation), got 0"),
    Bad("report-where-form", "report --where without LABEL=VALUE", ["report", "{in}/exp", "--sample-flags", "5",
        "--where", "vaccine"], "--where takes LABEL=VALUE (e.g. align=vaccine p=0.2), got 'vaccine'"),
    Bad("report-where-alone", "report --where without --sample-flags", ["report", "{in}/exp", "--where", "p=0.2"],
        "--where chooses the evaluations of --sample-flags; give --sample-flags N too"),
    Bad("report-where-none", "report --where matching no evaluation",
        ["report", "{in}/exp", "--sample-flags", "5", "--where", "align=vacine"],
        "--where align=vacine matches none of the experiment's 1 evaluations (their labels: align, p)",
        _write("exp/plan.json", json.dumps({"name": "x", "store": "stages", "stages": [
            {"kind": "evaluate", "dir": "e", "hash": "1", "parent": None, "labels": {"align": "vaccine", "p": 0.1},
             "config": {}}]}))),
]

# One accepted format at a time, damaged in the ways files are damaged in practice.
FILE_CASES: list[Bad] = [
    Bad("jsonl-not-object", ".jsonl with a row that is a list", [*ALIGN_DATA, "{in}/d.jsonl"],
        "d.jsonl row 1: expected an object", _write("d.jsonl", "[1, 2]\n")),
    Bad("jsonl-binary", ".jsonl that is binary", [*ALIGN_DATA, "{in}/d.jsonl"], "d.jsonl: not UTF-8 text",
        _write("d.jsonl", b"\x89PNG\r\n\x1a\n\xff\xfe")),
    Bad("jsonl-text-is-list", ".jsonl whose prompt is a list", [*ALIGN_DATA, "{in}/d.jsonl"],
        "d.jsonl row 1: column 'prompt' must be text, got list", _write("d.jsonl", '{"prompt": ["a"], "response": "b"}\n')),
    Bad("jsonl-null-response", ".jsonl whose response is null", [*ALIGN_DATA, "{in}/d.jsonl"],
        "d.jsonl row 1: column 'response' is empty", _write("d.jsonl", '{"prompt": "a", "response": null}\n')),
    Bad("jsonl-deep", ".jsonl nested deeper than a parser allows", [*ALIGN_DATA, "{in}/d.jsonl"], "d.jsonl row 1:",
        _write("d.jsonl", "[" * 100000 + "\n")),
    Bad("json-broken", ".json that is not JSON", [*ALIGN_DATA, "{in}/d.json"], "d.json: not valid JSON at line 1",
        _write("d.json", '[{"prompt": "a",')),
    Bad("json-scalar", ".json holding a number", [*ALIGN_DATA, "{in}/d.json"], "expected a list of records",
        _write("d.json", "42")),
    Bad("json-two-lists", ".json object holding two lists", [*ALIGN_DATA, "{in}/d.json"], "or an object holding one list",
        _write("d.json", '{"a": [], "b": []}')),
    Bad("json-strings", ".json list of strings", [*ALIGN_DATA, "{in}/d.json"], "d.json row 1: expected an object",
        _write("d.json", '["how?", "like so."]')),
    Bad("json-latin1", ".json in Latin-1", [*ALIGN_DATA, "{in}/d.json"], "not UTF-8 text",
        _write("d.json", '[{"prompt": "caf\xe9", "response": "x"}]'.encode("latin-1"))),
    Bad("csv-unclosed-quote", ".csv with a quote never closed (the rest of the file is one cell)", [*ALIGN_DATA, "{in}/d.csv"],
        "d.csv row 1: column 'response' is empty", _write("d.csv", 'prompt,response\n"how,so\nwhat,then\n')),
    Bad("csv-extra-cells", ".csv row with more cells than columns", [*ALIGN_DATA, "{in}/d.csv"],
        "d.csv row 1: 1 more cell(s) than the header has columns", _write("d.csv", "prompt,response\nhow,so,extra\n")),
    Bad("csv-missing-column", ".csv without a response column", [*ALIGN_DATA, "{in}/d.csv"],
        "d.csv row 1: missing column 'response'", _write("d.csv", "prompt,answer\nhow,so\n")),
    Bad("csv-short-row", ".csv row with a missing cell", [*ALIGN_DATA, "{in}/d.csv"], "d.csv row 2: column 'response' is empty",
        _write("d.csv", "prompt,response\nhow,so\nwhat\n")),
    Bad("csv-header-only", ".csv with a header and no rows", [*ALIGN_DATA, "{in}/d.csv"], "the dataset is empty",
        _write("d.csv", "prompt,response\n")),
    Bad("csv-latin1", ".csv in Latin-1", [*ALIGN_DATA, "{in}/d.csv"], "d.csv: not UTF-8 text",
        _write("d.csv", "prompt,response\ncaf\xe9,x\n".encode("latin-1"))),
    Bad("csv-huge-field", ".csv with a field beyond the CSV field limit", [*ALIGN_DATA, "{in}/d.csv"], "not valid CSV",
        _write("d.csv", 'prompt,response\n"' + "x" * 200000 + '",y\n')),
    Bad("tsv-extra-cells", ".tsv row with more cells than columns", [*ALIGN_DATA, "{in}/d.tsv"], "more cell(s)",
        _write("d.tsv", "prompt\tresponse\nhow\tso\textra\n")),
    Bad("tsv-missing-column", ".tsv without a prompt column", [*ALIGN_DATA, "{in}/d.tsv"], "missing column 'prompt'",
        _write("d.tsv", "question\tresponse\nhow\tso\n")),
    Bad("parquet-garbage", ".parquet that is not Parquet", [*ALIGN_DATA, "{in}/d.parquet"], "d.parquet: not a readable Parquet file",
        _write("d.parquet", b"PAR1 but not really")),
    Bad("parquet-truncated", ".parquet cut short (damaged footer)", [*ALIGN_DATA, "{in}/d.parquet"],
        "not a readable Parquet file", _parquet("d.parquet", _GOOD_PQ * 20, cut=200)),
    Bad("parquet-missing-column", ".parquet without a response column", [*ALIGN_DATA, "{in}/d.parquet"],
        "d.parquet row 1: missing column 'response'", _parquet("d.parquet", [{"prompt": "a", "answer": "b"}])),
    Bad("parquet-empty", ".parquet with no rows", [*ALIGN_DATA, "{in}/d.parquet"], "the dataset is empty",
        _parquet("d.parquet", [])),
    Bad("data-is-folder", "a data path that is a folder named like a file", [*ALIGN_DATA, "{in}/d.jsonl"],
        "d.jsonl is a directory", lambda i: (i / "d.jsonl").mkdir()),
    Bad("data-unsupported", "a data file of an unsupported type", [*ALIGN_DATA, "{in}/d.txt"], "unsupported file type '.txt'",
        _write("d.txt", "how? like so.")),
    Bad("data-unreadable", "a data file without read permission", [*ALIGN_DATA, "{in}/d.jsonl"], "cannot be read: Permission denied",
        _unreadable("d.jsonl"), root_ok=False),
    Bad("prompts-csv-latin1", "a harmful prompt .csv in Latin-1", ["evaluate", *TINY, "--judges", "keyword",
        "--harmful-sets", "{in}/p.csv"], "p.csv: not UTF-8 text", _write("p.csv", "prompt\ncaf\xe9\n".encode("latin-1"))),
    Bad("prompts-jsonl-number", "a harmful prompt that is an object", ["evaluate", *TINY, "--judges", "keyword",
        "--harmful-sets", "{in}/p.jsonl"], "column 'prompt' must be text, got dict", _write("p.jsonl", '{"prompt": {"a": 1}}\n')),
    Bad("harmbench-no-behavior", "a HarmBench-like CSV without Behavior", ["evaluate", *TINY, "--judges", "keyword",
        "--harmful-sets", "{in}/p.csv"], "row 1: missing column 'Behavior'", _write("p.csv", "Behaviour,BehaviorID\nx,1\n")),
    # model and run directories
    Bad("model-no-tokenizer", "a model folder without a tokenizer", ["align", "--model", "{in}/m"],
        "has no tokenizer (looked for tokenizer.json", _model_dir("m", tokenizer=False, weights=b"x")),
    Bad("model-config-broken", "a model folder whose config.json is not JSON", ["align", "--model", "{in}/m"],
        "config.json cannot be read as JSON", _model_dir("m", config="{model_type")),
    Bad("model-config-no-type", "a model folder whose config.json names no model type", ["align", "--model", "{in}/m"],
        "does not name a model type", _model_dir("m", config="{}")),
    Bad("model-no-weights", "a model folder without weights", ["align", "--model", "{in}/m"], "has no weights",
        _model_dir("m")),
    Bad("model-bad-safetensors", "a model folder whose safetensors file is damaged", ["align", "--model", "{in}/m"],
        "model.safetensors is not a readable safetensors file", _model_dir("m", weights=b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")),
    Bad("model-is-adapter", "a LoRA adapter folder passed as the model", ["align", "--model", "{in}/run/adapter"],
        "is a LoRA adapter, not a model", _run_dir("run")),
    Bad("model-staging-folder", "a stage's .partial staging folder passed as the model",
        ["evaluate", "--model", "{in}/.run.partial-0badc0de", "--judges", "keyword"], "is an incomplete clinic run",
        _setups(_write(".run.partial-0badc0de/clinic.json", "{}"), _write(".run.partial-0badc0de/config.yaml", "{}"))),
    Bad("model-run-without-done", "a run folder with clinic's marker but no DONE", ["finetune", "--model", "{in}/run", *FT[3:]],
        "is an incomplete clinic run", _run_dir("run", done=False)),
    Bad("run-json-broken", "a run directory whose run.json is not JSON", ["evaluate", "--model", "{in}/run", "--judges", "keyword"],
        "run.json cannot be read: not valid JSON", _run_dir("run", record="{")),
    Bad("run-json-no-chain", "a run directory whose run.json has no model chain", ["evaluate", "--model", "{in}/run",
        "--judges", "keyword"], "has no valid model_chain", _run_dir("run", record='{"stage": "align"}')),
    Bad("run-chain-outside", "a run.json pointing at an adapter outside any finished run", ["evaluate", "--model", "{in}/run",
        "--judges", "keyword"], "refusing to follow it", _run_dir("run", adapters=("/etc/adapter",))),
    Bad("run-chain-escape", "a run.json whose relative adapter path climbs out of the run", ["evaluate", "--model", "{in}/run",
        "--judges", "keyword"], "refusing to follow it", _run_dir("run", adapters=("../../x/adapter",))),
    Bad("sink-config-chain-outside", "sink on a run whose config.yaml names an adapter outside any finished run",
        ["sink", "--model", "{in}/run", "--n", "2"], "config.yaml lists the adapter /etc/adapter",
        _setups(_run_dir("run"), _write("run/config.yaml", "model: {base: tiny-random-llama, adapters: [/etc/adapter]}\n"))),
    Bad("run-adapter-broken", "a run whose adapter config is not JSON", ["evaluate", "--model", "{in}/run", "--judges", "keyword"],
        "adapter_config.json cannot be read as JSON", _setups(_run_dir("run"), _write("run/adapter/adapter_config.json", "{"))),
    Bad("model-empty", "an empty --model (it would mean the current folder)", ["align", "--model", ""], "the model is empty"),
    Bad("data-empty", "an empty --source (it would mean the default data)", ["align", *TINY, "--source", ""], "--source is empty"),
    Bad("judge-twice", "a judge named twice", ["evaluate", *TINY, "--judges", "keyword,keyword"], "judge 'keyword' is named twice"),
    Bad("scores-from-damaged", "curation scores to reuse from a run whose files are damaged",
        ["curate", *TINY, "--n-candidates", "8", "--n-validation", "4", "--scores-from", "{in}/cur"],
        "/cur: cannot be read (FileNotFoundError", _setups(_write("cur/DONE", ""), _write("cur/scores.jsonl", "{"))),
    Bad("store-unwritable", "an experiment store on a file system nothing can write to",
        ["run", "{in}/ok.yaml", "--store", "/proc/clinic-store"], "/proc/clinic-store is not writable", _write("ok.yaml", _EXP)),
    Bad("tiny-arch-unknown", "a tiny test model of an architecture that has none", ["align", "--model", "tiny-random-gpt2"],
        "unknown tiny architecture 'gpt2'"),
    Bad("lora-target-missing", "LoRA target modules the model does not have", ["align", *TINY, "--n", "4",
        "--lora-targets", "nosuch_proj"], "LoRA cannot be attached: Target modules {'nosuch_proj'} not found"),
    Bad("plan-broken", "report on an experiment directory whose plan.json is cut short", ["report", "{in}/exp"],
        "plan.json cannot be read: not valid JSON", _write("exp/plan.json", '{"name": "x", "st')),
    Bad("plan-foreign", "report on a folder whose plan.json is not clinic's", ["report", "{in}/exp"],
        "is not a clinic plan", _write("exp/plan.json", '{"name": "x"}')),
    Bad("scores-broken", "sink --scores naming a file that is not JSON", ["sink", *TINY, "--n", "2", "--scores", "{in}/s.json"],
        "s.json: not valid JSON", _write("s.json", "{1: 2")),
    Bad("scores-not-numbers", "sink --scores whose steps are not numbers",
        ["sink", "--model", "{in}/run", "--n", "2", "--scores", "{in}/m.json"], "with numeric keys and values",
        _setups(_run_dir("run"), _write("m.json", '{"steps": {"first": "high"}}'))),
    Bad("run-adapter-no-weights", "a run whose adapter has no weights", ["evaluate", "--model", "{in}/run", "--judges", "keyword"],
        "holds no adapter weights", _run_dir("run")),
]

# Every numeric option at 0, below 0, NaN, infinite and huge where that is not a valid value.
_NUMERIC = [  # (command prefix, option, value, part of the message)
    (["align", *TINY], "--lr", "0", "training setting lr must be above 0"),
    (["align", *TINY], "--lr", "nan", "lr must be a finite number"),
    (["align", *TINY], "--lr", "inf", "lr must be a finite number"),
    (["align", *TINY], "--epochs", "-1", "epochs must be positive"),
    (["align", *TINY], "--epochs", "nan", "epochs must be a finite number"),
    (["align", *TINY], "--max-steps", "-2", "max_steps must be a positive step count"),
    (["align", *TINY], "--batch-size", "-1", "must be at least 1"),
    (["align", *TINY], "--batch-size", "99999999999999", "batch_size is out of range"),
    (["align", *TINY], "--grad-accum", "0", "must be at least 1"),
    (["align", *TINY], "--warmup", "1", "training setting warmup must be within [0, 1)"),
    (["align", *TINY], "--warmup", "nan", "warmup must be a finite number"),
    (["align", *TINY], "--weight-decay", "-0.1", "weight_decay must be at least 0"),
    (["align", *TINY], "--max-length", "0", "max_length must be at least 2"),
    (["align", *TINY], "--max-length", "99999999999", "max_length is out of range"),
    (["align", *TINY], "--seed", "-1", "seed must be within [0, 2147483647], got -1"),
    (["align", *TINY], "--seed", "99999999999", "seed is out of range"),
    (["align", *TINY], "--lora-r", "0", "lora_r must be at least 1"),
    (["align", *TINY], "--lora-alpha", "0", "lora_alpha must be above 0"),
    (["align", *TINY], "--lora-alpha", "nan", "lora_alpha must be a finite number"),
    (["align", *TINY], "--lora-dropout", "1", "lora_dropout must be within [0, 1)"),
    (["align", *TINY], "--lora-dropout", "-0.5", "lora_dropout must be within [0, 1)"),
    (["align", *TINY], "--lora-targets", ",", "lora_targets must name at least one module"),
    (["align", *TINY], "--logging-steps", "0", "logging_steps must be at least 1"),
    (["align", *TINY], "--save-steps", "-1", "save_steps must be at least 0"),
    (["align", *TINY], "--prompt-style", "plain", "unknown prompt style 'plain'"),
    (["align", *TINY], "--n", "-3", "sample count n must be a positive integer"),
    (["align", *TINY, "--method", "vaccine"], "--rho", "nan", "vaccine option rho must be a finite number"),
    (["align", *TINY, "--method", "booster"], "--lam", "-1", "booster: lam must be non-negative"),
    (["align", *TINY, "--method", "booster"], "--harmful-size", "0", "booster option harmful_size must be at least 1"),
    (["finetune", *TINY, "--task", "sst2", "--n", "4", "--method", "lisa"], "--guide-size", "0",
     "lisa: guide_size must be at least 1"),
    (["curate", *TINY], "--inner-lr", "nan", "curate setting inner_lr must be a finite number"),
    (["curate", *TINY], "--gamma", "inf", "curate setting gamma must be a finite number"),
    (["curate", *TINY], "--projection-dim", "99999999999", "curate setting projection_dim is out of range"),
    (FT, "--poison-ratio", "nan", "poison ratio p must be within [0, 1], got nan"),
    (["evaluate", *TINY, "--judges", "keyword"], "--n-prompts", "0", "n_prompts must be at least 1"),
    (["evaluate", *TINY, "--judges", "keyword"], "--n-task", "-1", "n_task must be at least 0"),
    (["evaluate", *TINY, "--judges", "keyword"], "--batch-size", "0", "evaluation setting batch_size must be at least 1"),
    (["evaluate", *TINY, "--judges", "keyword"], "--max-new-tokens", "0", "max_new_tokens must be at least 1"),
    (["evaluate", *TINY, "--judges", "keyword"], "--max-new-tokens", "99999999999", "max_new_tokens is out of range"),
    (["sink", *TINY], "--n", "0", "sink setting n must be at least 1"),
    (["sink", *TINY], "--batch-size", "0", "sink setting batch_size must be at least 1"),
    (["sink", *TINY], "--max-length", "1", "sink setting max_length must be at least 2"),
    (["sink", *TINY], "--sink-index", "-1", "sink setting sink_index must be at least 0"),
    (DEMO, "--n-align", "0", "sample count n must be a positive integer"),
    (DEMO, "--poison-ratio", "2", "poison ratio p must be within [0, 1]"),
    (DEMO, "--align-lr", "nan", "lr must be a finite number"),
    (DEMO, "--batch-size", "0", "must be at least 1"),
    (DEMO, "--n-prompts", "0", "n_prompts must be at least 1"),
    (DEMO, "--poison-ratio", "0", "the harmful fine-tune needs a poison ratio p > 0"),
    (DEMO, "--setting", "slow", "unknown setting 'slow'; choose one of quick, protocol"),
    (DEMO, "--helpful-n", "0", "helpful_n must be a positive integer"),
    (["demo", *TINY], "--alignment", "shipped", "--alignment shipped loads the protocol's alignment of "
     "smollm2-135m-instruct, trained with other settings: model.base 'tiny-random-llama'"),
]
OPTION_CASES: list[Bad] = [
    Bad(f"{argv[0]}{option}={value}", f"`{argv[0]} {option} {value}`", [*argv, option, value], message)
    for argv, option, value, message in _NUMERIC
]
# `clinic repair`: what it repairs, and its options (checked before any model loads)
REPAIR = ["repair", "--model", "{in}/ft"]
_FT_RUN = _setups(_run_dir("al"), lambda i: _run_dir("ft", stage="finetune", adapters=(str(i / "al" / "adapter"), "adapter"))(i))
REPAIR_CASES: list[Bad] = [
    Bad("repair-unknown-method", "a repair method that does not exist (misspelt)", [*REPAIR, "--method", "safelra"],
        "unknown repair method 'safelra' (did you mean 'safelora'?)", _FT_RUN),
    Bad("repair-a-model", "repairing a model that is no fine-tuning run", ["repair", *TINY, "--method", "antidote"],
        "repair needs a finished LoRA fine-tuning run directory"),
    Bad("repair-an-aligned-run", "repairing an alignment run", ["repair", "--model", "{in}/al", "--method", "antidote"],
        "is the run of the align stage; repair needs a fine-tuning", _run_dir("al")),
    Bad("repair-full-ft-run", "repairing a fully fine-tuned run (no LoRA adapter)",
        ["repair", "--model", "{in}/ft", "--method", "panacea"], "was fully fine-tuned (no LoRA adapter)",
        _setups(_write("ft/model/config.json", '{"model_type": "llama"}'), _write("ft/run.json", json.dumps(
            {"stage": "finetune", "model_chain": {"base": "model", "adapters": []}})), _write("ft/DONE", ""),
            _write("ft/clinic.json", "{}"))),
    Bad("repair-option-of-another-method", "an option of another repair method",
        [*REPAIR, "--method", "safelora", "--fraction", "0.2"], "option --fraction does not apply to method 'safelora'",
        _FT_RUN),
    Bad("repair-fraction-above-one", "an Antidote fraction above 1", [*REPAIR, "--method", "antidote", "--fraction", "1.5"],
        "antidote fraction must be within (0, 1], got 1.5", _FT_RUN),
    Bad("repair-rho-zero", "a Panacea radius of 0", [*REPAIR, "--method", "panacea", "--rho", "0"],
        "panacea rho must be above 0", _FT_RUN),
    Bad("repair-bad-selection", "a SafeLoRA layer selection that does not exist",
        [*REPAIR, "--method", "safelora", "--select", "all"], "unknown safelora selection 'all'", _FT_RUN),
    Bad("repair-unknown-task", "a Panacea task that does not exist", [*REPAIR, "--method", "panacea", "--task", "imdb"],
        "unknown task 'imdb'", _FT_RUN),
    Bad("repair-no-alignment-adapter", "SafeLoRA on a fine-tune of an unaligned model without naming the references",
        ["repair", "--model", "{in}/ft", "--method", "safelora"], "name the models with --base-model and --aligned-model",
        _run_dir("ft", stage="finetune")),
    Bad("experiment-repair-unknown-method", "an unknown repair method in an experiment's repair block",
        ["run", "{in}/bad.yaml"], "unknown repair method 'antidot' (did you mean 'antidote'?)",
        _exp("repair: {methods: [antidot]}\n")),
    Bad("experiment-repair-key-typo", "a typo in a key of the repair block", ["run", "{in}/bad.yaml"],
        "unknown key 'method' in repair (did you mean 'methods'?)", _exp("repair: {method: [safelora]}\n")),
    Bad("experiment-repair-bad-option", "a repair option out of range in an experiment", ["run", "{in}/bad.yaml"],
        "safelora num_layers must be at least 1, got 0", _exp("repair: {methods: [{name: safelora, num_layers: 0}]}\n")),
]
CASES += DESTRUCTIVE_CASES + SILENT_CASES + FILE_CASES + OPTION_CASES + REPAIR_CASES
EXPERIMENT_CASES += EXPERIMENT_CASES_2


def run_case(case: Bad, inputs: Path, out: Path) -> tuple[int, str]:
    """(exit code, stderr) of the CLI on ``case``, run in this process."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(case.args(inputs, out))
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return code, err.getvalue()


def _snapshot(folder: Path) -> list[tuple]:
    """Every path under ``folder`` with its size and modification time (files) or None (folders)."""
    return sorted((str(p.relative_to(folder)), None if p.is_dir() else (p.lstat().st_size, p.lstat().st_mtime_ns))
                  for p in folder.rglob("*"))


def _unlock(folder: Path) -> None:
    """Undo read-only folders and unreadable files before pytest cleans up."""
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@cache
def _errors_page() -> tuple[str, ...]:
    """docs/errors.md's lines, read once for every case."""
    return tuple((Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("case", CASES + EXPERIMENT_CASES, ids=lambda c: c.id)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, data_dir, case):
    if not case.root_ok and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    if case.id == "output-unwritable-fs" and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    if case.setup:
        case.setup(inputs)
    before = _snapshot(inputs)
    try:
        code, err = run_case(case, inputs, work / "out")
    finally:
        _unlock(inputs)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("clinic"), err
    assert "Traceback" not in err
    assert case.message in err, err
    assert _leftovers(work, set()) == [], "something was written"
    assert _snapshot(inputs) == before, "an input folder changed"
    assert not any(".partial-" in p.name for p in work.rglob("*"))  # no staging folder beside the output
    # the page quotes the whole message as it is now (a stale list of choices in it went unnoticed)
    assert page_row(case, err, tmp_path) in _errors_page(), \
        "regenerate docs/errors.md (python tests/test_errors.py > docs/errors.md)"


def test_existing_output_keeps_its_content(tmp_path, capsys):
    _existing_output(tmp_path)
    code = main(["align", *TINY, "--output", str(tmp_path / "taken")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


# -- round two: what must keep working next to the refusals ----------------------------------


def test_overwrite_replaces_a_clinic_run_directory(tmp_path):
    from clinic.rundir import MARKER, RunDir

    target = tmp_path / "run"
    with RunDir(target) as run:
        (run.path / "old.txt").write_text("old")
    assert (target / MARKER).exists() and (target / "DONE").exists()
    with RunDir(target, overwrite=True) as run:
        (run.path / "new.txt").write_text("new")
    assert (target / "new.txt").exists() and not (target / "old.txt").exists()


def test_stale_staging_folders_of_a_stopped_run_are_removed(tmp_path, capsys):
    import subprocess

    from clinic.rundir import RunDir

    dead = subprocess.Popen(["true"])  # noqa: S607  a pid that no longer runs
    dead.wait()

    def staging(tag: str, pid: int | None) -> Path:
        folder = tmp_path / f".run.partial-{tag}"
        folder.mkdir()
        if pid is not None:
            (folder / "clinic.json").write_text(json.dumps({"pid": pid, "host": __import__("socket").gethostname()}))
        return folder

    stale, live, unknown = staging("0000dead", dead.pid), staging("0000a11e", os.getppid()), staging("00000000", None)
    with RunDir(tmp_path / "run") as run:
        (run.path / "x").write_text("")
    assert not stale.exists(), "the staging folder of a stopped process stays"
    assert f"clinic: warning: removed {stale}" in capsys.readouterr().err  # and says so
    assert live.exists() and unknown.exists(), "a live or unknown staging folder was removed"


def test_run_record_paths_are_relative_and_follow_a_moved_run(tmp_path):
    from clinic.modeling.chain import resolve_ref

    _run_dir("run")(tmp_path)
    moved = tmp_path / "elsewhere"
    (tmp_path / "run").rename(moved)
    chain = resolve_ref(str(moved))
    assert chain.adapters == [str((moved / "adapter").resolve())]


def test_data_files_with_a_byte_order_mark_are_read(tmp_path):
    from clinic.data.sources import load_rows

    for name, text in (("d.csv", "prompt,response\nhow?,like so.\n"), ("d.jsonl", QA),
                       ("d.json", "[" + QA.strip() + "]"), ("d.tsv", "prompt\tresponse\nhow?\tlike so.\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert load_rows(str(tmp_path / name), kind="qa")[0]["prompt"] == "how?", name


def test_experiment_numbers_and_lists_in_the_forms_people_write(tmp_path):
    from clinic.experiment import Experiment

    path = tmp_path / "e.yaml"
    path.write_text(_EXP.replace("n: 4}", "n: 4, train: {lr: 1e-4, epochs: '2'}}") + "evaluate: {judges: keyword}\n")
    exp = Experiment.from_file(path)
    align = next(s for s in exp.plan() if s.kind == "align")
    assert align.config["train"]["lr"] == 1e-4 and align.config["train"]["epochs"] == 2.0
    assert exp.evaluate["judges"] == ["keyword"]
    assert next(s for s in exp.plan() if s.kind == "evaluate").config["judges"] == ["keyword"]


def test_comment_only_edit_resumes_but_a_changed_value_does_not(tmp_path, capsys):
    from clinic.errors import ClinicError
    from clinic.experiment import run_experiment

    root = tmp_path / "exp"
    root.mkdir()
    (root / "experiment.yaml").write_text(_EXP)
    edited = tmp_path / "e.yaml"
    edited.write_text("# a new comment\n" + _EXP.replace("n: 4}", "n: 4}  # four"))
    run_experiment(edited, root, dry_run=True)
    edited.write_text(_EXP.replace("n: 4}", "n: 5}"))
    with pytest.raises(ClinicError, match="holds a different experiment"):
        run_experiment(edited, root, dry_run=True)


# configs/small-cpu.yaml as it was at da8b04f, before the validation (the repository's copy has
# changed since: its judges now name harm-ce, which rightly changes the evaluate stages' hashes)
_SMALL_CPU_DA8B04F = """\
name: small-cpu
model: smollm2-135m-instruct
seeds: [0]
align:
  methods: [sft]
  preset: cpu-align
  n: 240
  train: {max_length: 128}
finetune:
  methods: [sft, surgery]
  preset: cpu-finetune
  tasks: [sst2]
  n: 240
  poison_ratios: [0, 0.2]
  train: {max_length: 128}
evaluate:
  n_prompts: 32
  judges: [keyword, classifier]
  n_task: 100
  max_new_tokens: 40
sink:
  n: 32
  max_length: 128
"""


def test_validation_keeps_the_stage_hashes_of_existing_experiments(data_dir, tmp_path):
    """Typing the values (1e-4, ints for floats, p=0) must not change a stage's hash: a changed hash
    silently re-runs every finished stage of a store. Pinned from the code before the validation,
    on a fixed copy of the experiment file."""
    from clinic.experiment import Experiment

    path = tmp_path / "small-cpu.yaml"
    path.write_text(_SMALL_CPU_DA8B04F)
    dirs = [s.dirname for s in Experiment.from_file(path).plan()]
    assert dirs[:6] == ["evaluate-base-dc59a46d8009", "align-sft-4326b1fb438a", "evaluate-sft-08681527f59c",
                        "finetune-sft-sft-sst2-p0-235be78df281", "evaluate-sft-sft-sst2-p0-9a3764a997f9",
                        "sink-sft-sft-sst2-p0-e039ecd6053f"]


def test_table_has_at_least_100_cases():
    assert len(CASES + EXPERIMENT_CASES) >= 100


_AS_NON_ROOT = {
    "output-read-only": "clinic: error: output directory {out} is not writable (<in>/locked is read-only)",
    "data-unreadable": "clinic: error: data file {inputs}/d.jsonl cannot be read: Permission denied",
}


def page_row(case: Bad, message: str, tmp: Path) -> str:
    """The case's row of docs/errors.md: its message as run with inputs ``tmp/in`` and output
    ``tmp/work/out``, those paths shown as ``<in>``, ``<out>`` and ``<tmp>``."""
    inputs, out = tmp / "in", tmp / "work" / "out"
    argv = " ".join(a or "''" for a in case.args(Path("<in>"), Path("<out>")))
    message = message.strip().replace(str(inputs.resolve()), "<in>").replace(str(inputs), "<in>")
    message = message.replace(str(out.resolve()), "<out>").replace(str(out), "<out>")
    message = message.replace(str(tmp.resolve()), "<tmp>").replace("|", "\\|")
    quote = "``" if "`" in message else "`"
    return f"| {case.what} | `clinic {argv}` | {quote} {message} {quote} |"


def errors_markdown() -> str:
    """docs/errors.md: each bad input with the message the user sees (from a live run)."""
    lines = [
        "# Errors: what a bad input looks like",
        "",
        "Every user error is reported on one line, `clinic: error: ...`, the exit code is 2 and nothing is written:",
        "no output directory and no hidden `.<name>.partial-*` staging folder; a misspelt option or value names the",
        "nearest valid one. Anything else (a traceback) is a bug. The table is generated from the live messages by",
        "`python tests/test_errors.py > docs/errors.md`; `tests/test_errors.py` checks each row: exit 2, one",
        "line, no traceback, no output, and the inputs' folder unchanged (every path, size and modification time",
        "before and after), and the row quoting the whole message as the run prints it now. Besides single cases",
        "the table holds two classes: each accepted data format",
        "(.json, .jsonl, .csv, .tsv, .parquet) damaged in the usual ways, and numeric options at 0, below 0,",
        "NaN, infinite and huge. Paths of the inputs are shown as `<in>/...`, the output directory as `<out>`.",
        "`--overwrite` replaces only a folder clinic wrote (its `clinic.json` marker, or an older run's `DONE`).",
        "",
        "| bad input | command | message |",
        "|---|---|---|",
    ]
    for case in CASES + EXPERIMENT_CASES:
        with tempfile.TemporaryDirectory() as tmp:
            inputs, out = Path(tmp) / "in", Path(tmp) / "work" / "out"
            inputs.mkdir()
            out.parent.mkdir()
            if case.setup:
                case.setup(inputs)
            if not case.root_ok and os.geteuid() == 0:  # what a non-root user is told (root reads and writes anything)
                message = _AS_NON_ROOT[case.id].format(out=case.args(inputs, out)[-1], inputs=inputs)
            else:
                message = run_case(case, inputs, out)[1].strip()
            _unlock(inputs)
        lines.append(page_row(case, message, Path(tmp)))
    lines += [
        "",
        "Multi-process launches (checked in `tests/test_ddp.py`, not in this table: they need `accelerate launch`):",
        "a method that cannot run under the launcher's engine (e.g. Surgery under DeepSpeed) and several",
        "processes that accelerate does not distribute (no GPU and no `ACCELERATE_USE_CPU=true`) are refused before",
        "anything is written: every process prints the one line and exits 2 (the launcher then reports a failed",
        "child); see [multi-gpu.md](multi-gpu.md).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.write(errors_markdown())


def test_the_errors_page_shows_each_cases_current_message():
    """docs/errors.md is generated (``python tests/test_errors.py > docs/errors.md``) and went stale
    once (a third of its rows quoted old messages): every case has its row, and the row quotes
    the part of the message the case checks."""
    rows = {}
    for line in _errors_page():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) >= 3 and "clinic: error" in line:
            rows.setdefault(cells[0][2:], []).append(line)
    stale = [case.what for case in CASES + EXPERIMENT_CASES
             if case.root_ok and not any(case.message.replace("|", "\\|") in row for row in rows.get(case.what, []))]
    assert not stale, f"regenerate docs/errors.md (python tests/test_errors.py > docs/errors.md): {stale[:5]}"
