"""The CLI: every command end to end on a tiny model, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clinic.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["align", "finetune", "evaluate", "demo", "methods", "data"])
def test_help_explains_every_option(command):
    out = subprocess.run([sys.executable, "-m", "clinic.cli", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if command in ("align", "finetune"):
        for option in ("--model", "--method", "--output", "--lr", "--epochs", "--lora-r", "--preset", "--overwrite"):
            assert option in out.stdout
        assert "methods:" in out.stdout and "sft" in out.stdout


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
    generations = [json.loads(line) for line in (eval_dir / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 6 and {g["set"] for g in generations} == {"beavertails-test", "sst2"}
    assert "harmful score [beavertails-test, keyword]" in out


def test_full_finetuning_saves_a_model(tmp_path, capsys, data_dir):
    code, _, err = run_cli(capsys, "finetune", "--model", "tiny-random-qwen2", "--task", "agnews", "--n", "4",
                           "--max-steps", "1", "--batch-size", "2", "--max-length", "1024", "--full-ft", "--output", str(tmp_path / "ft"))
    assert code == 0, err
    assert (tmp_path / "ft" / "model" / "config.json").exists()
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["model_chain"]["adapters"] == [] and run["model_chain"]["base"].endswith("model")


BAD_INPUTS = [
    (["finetune", "--model", "tiny-random-llama", "--task", "sst2", "--n", "10", "--poison-ratio", "1.5"], "within [0, 1]"),
    (["finetune", "--model", "tiny-random-llama", "--task", "sst2", "--n", "999999", "--poison-ratio", "0.5"], "are available"),
    (["finetune", "--model", "tiny-random-llama", "--task", "imdb", "--n", "10"], "unknown task 'imdb'"),
    (["align", "--model", "tiny-random-llama", "--method", "nosuch"], "unknown align method 'nosuch'"),
    (["align", "--model", "tiny-random-llama", "--preset", "fast"], "unknown preset 'fast'"),
    (["align", "--model", "tiny-random-llama", "--schedule", "cosin"], "unknown schedule 'cosin'"),
    (["align", "--model", "./missing-model", "--n", "4"], "not found"),
    (["align", "--model", "tiny-random-llama", "--data", "missing.jsonl"], "unknown dataset 'missing.jsonl'"),
    (["align", "--model", "tiny-random-llama", "--n", "100000"], "are available"),
    (["evaluate", "--model", "tiny-random-llama", "--judges", "vibes"], "unknown judge"),
    (["evaluate", "--model", "tiny-random-llama", "--tasks", "alpaca"], "no accuracy rule"),
    (["evaluate", "--model", "tiny-random-llama", "--harmful-prompts", "advbench", "--n-prompts", "5000"], "only 520"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, data_dir, argv, message):
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, *argv, "--output", str(out_dir))
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "align", "--model", "tiny-random-llama", "--output", str(out_dir))
    assert code == 2 and "already exists" in err
    assert (out_dir / "keep.txt").read_text() == "mine"


def test_bad_user_file_column(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    code, _, err = run_cli(capsys, "align", "--model", "tiny-random-llama", "--data", str(path),
                           "--columns", "prompt=question,response=reply", "--output", str(tmp_path / "o"))
    assert code == 2 and "data.jsonl row 1: missing column 'reply'" in err
    assert not (tmp_path / "o").exists()


def test_option_of_another_method_is_rejected(tmp_path, capsys):
    from clinic.methods.base import methods_for

    options = {f for spec in methods_for("align").values() for f in spec.config.__dataclass_fields__}
    if not options:
        pytest.skip("no align method with options registered yet")
    option = sorted(options)[0]
    code, _, err = run_cli(capsys, "align", "--model", "tiny-random-llama", "--method", "sft",
                           f"--{option.replace('_', '-')}", "1", "--output", str(tmp_path / "o"))
    assert code == 2 and "does not apply to method 'sft'" in err


def test_demo_on_a_tiny_model(tmp_path, capsys, data_dir):
    out_dir = tmp_path / "demo"
    code, out, err = run_cli(capsys, "demo", "--model", "tiny-random-llama", "--n-align", "8", "--n-finetune", "10",
                             "--batch-size", "4", "--max-length", "64", "--n-prompts", "3", "--n-task", "3",
                             "--max-new-tokens", "4", "--judges", "keyword", "--output", str(out_dir))
    assert code == 0, err
    table = (out_dir / "demo_table.md").read_text()
    assert "base model" in table and "aligned (sft)" in table and "harmful fine-tune (p=0.1)" in table
    for sub in ("eval-0-base", "1-align", "eval-1-aligned", "2-finetune", "eval-2-attacked"):
        assert (out_dir / sub / "DONE").exists()
    assert "HS keyword (%)" in out
    code, _, err = run_cli(capsys, "demo", "--model", "tiny-random-llama", "--output", str(out_dir))
    assert code == 2 and "already exists" in err
