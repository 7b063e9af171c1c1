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

CASES: list[Bad] = [
    # data
    Bad("missing-data-file", "a data file that does not exist", ["align", *TINY, "--data", "{in}/nope.jsonl"],
        "nope.jsonl does not exist"),
    Bad("unknown-dataset", "a dataset name that is neither a named dataset nor a file", ["align", *TINY, "--data", "refusal"],
        "unknown dataset 'refusal': not a file, and not one of"),
    Bad("malformed-jsonl", "a .jsonl file with a broken line", ["align", *TINY, "--data", "{in}/bad.jsonl"],
        "bad.jsonl row 2: not valid JSON", _write("bad.jsonl", QA + '{"prompt": "x", "response": \n')),
    Bad("wrong-column-mapping", "a column mapping naming a column the file lacks",
        ["align", *TINY, "--data", "{in}/qa.jsonl", "--columns", "prompt=question,response=reply"],
        "qa.jsonl row 1: missing column 'reply'", _write("qa.jsonl", '{"question": "q", "answer": "a"}\n')),
    Bad("malformed-column-mapping", "a column mapping that is not field=column",
        ["align", *TINY, "--data", "{in}/qa.jsonl", "--columns", "prompt"], "must look like field=column",
        _write("qa.jsonl", QA)),
    Bad("empty-dataset", "an empty data file", ["finetune", *TINY, "--data", "{in}/empty.jsonl"],
        "the dataset is empty", _write("empty.jsonl", "")),
    Bad("unknown-task", "a task that does not exist", ["finetune", *TINY, "--task", "imdb", "--n", "10"],
        "unknown task 'imdb'"),
    Bad("unknown-prompt-set", "a harmful prompt set that does not exist",
        ["evaluate", *TINY, "--harmful-prompts", "jailbreaks-2099", "--judges", "keyword"], "unknown dataset 'jailbreaks-2099'"),
    Bad("p-negative", "a poison ratio below 0", [*FT, "--poison-ratio", "-0.1"], "within [0, 1], got -0.1"),
    Bad("p-above-one", "a poison ratio above 1", [*FT, "--poison-ratio", "1.5"], "within [0, 1], got 1.5"),
    Bad("n-not-positive", "a sample count of 0", ["finetune", *TINY, "--task", "sst2", "--n", "0"],
        "sample count n must be a positive integer"),
    Bad("n-above-available", "more task samples than exist",
        ["finetune", *TINY, "--task", "sst2", "--n", "999999", "--poison-ratio", "0.5"], "are available"),
    Bad("n-above-available-align", "more alignment samples than exist", ["align", *TINY, "--n", "100000"], "are available"),
    Bad("n-prompts-above-available", "more evaluation prompts than the set holds",
        ["evaluate", *TINY, "--harmful-prompts", "advbench", "--n-prompts", "5000", "--judges", "keyword"], "only 520"),
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
    Bad("unknown-preset", "a preset that does not exist", ["align", *TINY, "--preset", "fast"], "unknown preset 'fast'"),
    Bad("bad-schedule", "a learning-rate schedule that does not exist", ["align", *TINY, "--schedule", "cosin"],
        "unknown schedule 'cosin'"),
    Bad("negative-lr", "a negative learning rate", ["align", *TINY, "--lr", "-0.0001"],
        "learning rate must be positive, got -0.0001"),
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
        "invalid choice: 'tgi'"),
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


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


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
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    try:
        code, err = run_case(case, inputs, work / "out")
    finally:
        for p in inputs.rglob("*"):  # undo read-only folders before pytest cleans up
            if p.is_dir():
                p.chmod(0o755)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("clinic"), err
    assert case.message in err, err
    assert _leftovers(work, set()) == [], "something was written"
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before, "an input folder changed"
    assert not any(".partial-" in p.name for p in tmp_path.rglob("*"))


def test_existing_output_keeps_its_content(tmp_path, capsys):
    _existing_output(tmp_path)
    code = main(["align", *TINY, "--output", str(tmp_path / "taken")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def errors_markdown() -> str:
    """docs/errors.md: each bad input with the message the user sees (from a live run)."""
    lines = [
        "# Errors: what a bad input looks like",
        "",
        "Every user error is reported on one line, `clinic: error: ...` (argparse: `clinic <command>: error: ...`),",
        "the exit code is 2 and nothing is written: no output directory and no hidden `.<name>.partial-*`",
        "staging folder. Anything else (a traceback) is a bug. The table is generated from the live messages by",
        "`python tests/test_errors.py > docs/errors.md`; `tests/test_errors.py` checks each row. Paths of the",
        "inputs are shown as `<in>/...`, the output directory as `<out>`.",
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
            if not case.root_ok and os.geteuid() == 0:  # what check_output_dir says to a non-root user
                message = f"clinic: error: output directory {case.args(inputs, out)[-1]} is not writable (<in>/locked is read-only)"
            else:
                message = run_case(case, inputs, out)[1].strip()
            for p in inputs.rglob("*"):
                if p.is_dir():
                    p.chmod(0o755)
        argv = " ".join(case.args(Path("<in>"), Path("<out>")))
        message = message.replace(str(inputs.resolve()), "<in>").replace(str(inputs), "<in>")
        message = message.replace(str(out.resolve()), "<out>").replace(str(out), "<out>")
        message = message.replace(str(Path(tmp).resolve()), "<tmp>").replace("|", "\\|")
        quote = "``" if "`" in message else "`"
        lines.append(f"| {case.what} | `clinic {argv}` | {quote} {message} {quote} |")
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
