"""Sink-divergence analysis: batched values vs an eager per-sample reference, files, callback, CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from datasets import Dataset

from clinic.data.formatting import training_row
from clinic.data.samples import Sample, probe_ids
from clinic.errors import ClinicError
from clinic.modeling.training import train_config
from clinic.methods.trainer import ClinicTrainer
from clinic.modeling.models import tiny_random_model
from clinic.stages.sink import run_sink_analysis
from clinic.sink.callback import SinkCountCallback
from clinic.sink.divergence import histogram, positive_head_count, sink_divergence


HARMFUL = [Sample(f"How do I break thing {i}?", "", "Do it like this" + " and so on" * i) for i in range(5)]
HARMLESS = [Sample(f"Tell me about bread {i}", "", "Bread is baked" + " from flour" * (5 - i)) for i in range(4)]


def eager_per_sample(ref, tok, samples) -> torch.Tensor:
    """[L, H]: mean over samples, each run alone (no padding), from full eager attention."""
    total = 0
    for s in samples:
        ids = torch.tensor([probe_ids(tok, s, 512)])
        with torch.no_grad():
            attn = ref(input_ids=ids, output_attentions=True).attentions
        total = total + torch.stack([a[0, :, 1:, 0].mean(-1) for a in attn])
    return total / len(samples)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_divergence_equals_eager_unbatched_reference(arch):
    model, tok = tiny_random_model(arch, seed=4)
    ref, _ = tiny_random_model(arch, seed=4)
    ref.set_attn_implementation("eager")
    got = sink_divergence(model, tok, HARMFUL, HARMLESS, batch_size=3)  # padded batches
    want = eager_per_sample(ref, tok, HARMFUL) - eager_per_sample(ref, tok, HARMLESS)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_mode_and_grad_state_are_left_alone():
    model, tok = tiny_random_model("qwen2")
    model.train()
    d = sink_divergence(model, tok, HARMFUL[:2], HARMLESS[:2], batch_size=2)
    assert model.training and not d.requires_grad


def test_counts_and_histogram():
    d = torch.tensor([[0.1, -0.2, 0.0], [0.3, -0.1, 0.05]])
    assert positive_head_count(d) == 3
    hist = histogram(d, bins=4)
    assert sum(hist["counts"]) == 6 and len(hist["edges"]) == 5
    assert hist["edges"][2] == pytest.approx(0.0)  # the sign split is a bin edge
    assert hist["counts"][:2] == [1, 1] and sum(hist["counts"][2:]) == 4


def test_probe_format_has_no_system_prompt_and_respects_max_length():
    _, tok = tiny_random_model("gemma")
    ids = probe_ids(tok, HARMFUL[1], 512)
    text = tok.decode(ids)
    assert text.startswith("<bos><start_of_turn>user\nHow do I break thing 1?")
    assert "<start_of_turn>model\nDo it like this" in text
    assert len(probe_ids(tok, HARMFUL[4], 10)) == 10


def test_single_model_analysis_writes_files(tmp_path, data_dir):
    out = run_sink_analysis("tiny-random-llama", tmp_path / "sink", n=4, batch_size=2, max_length=64)
    rows = list(csv.DictReader((out / "divergence.csv").open()))
    assert len(rows) == 2 * 4 and {r["label"] for r in rows} == {"model"}
    summary = json.loads((out / "sink.json").read_text())
    entry = summary["entries"][0]
    d = torch.tensor(entry["divergence"])
    assert entry["positive_heads"] == positive_head_count(d) and entry["total_heads"] == 8
    assert sum(entry["histogram"]["counts"]) == 8
    assert summary["settings"]["n"] == 4
    for name in ("heatmap.png", "histogram.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "DONE").exists()
    with pytest.raises(ClinicError, match="already exists"):
        run_sink_analysis("tiny-random-llama", out, n=4)


def test_run_directory_analysis_covers_every_checkpoint(tmp_path, data_dir):
    from clinic.stages.train import DataConfig, run_train

    run = run_train("finetune", model="tiny-random-llama", method="sft",
                    train=train_config(max_steps=2, batch_size=2, save_steps=1, max_length=64, logging_steps=1),
                    data=DataConfig(task="sst2", n=6, poison_ratio=0.5), output=tmp_path / "run")
    assert (run / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").exists()
    pickles = [p.name for p in run.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert pickles == [], "a pickle stayed in the run directory"
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"0": 10.0, "1": 20.0, "2": 30.0}))
    out = run_sink_analysis(str(run), tmp_path / "sink", n=3, batch_size=3, max_length=64, scores=scores)
    summary = json.loads((out / "sink.json").read_text())
    assert [(e["label"], e["step"]) for e in summary["entries"]] == [("step-0", 0), ("step-1", 1), ("final", 2)]
    assert [e["harmful_score"] for e in summary["entries"]] == [10.0, 20.0, 30.0]
    counts = list(csv.DictReader((out / "counts.csv").open()))
    assert [int(r["step"]) for r in counts] == [0, 1, 2]
    for name in ("count_vs_step.png", "count_vs_harmful_score.png", "heatmap_step-1.png", "heatmap.png"):
        assert (out / name).exists(), name
    # the fine-tuned models differ from the start model (the checkpoints were really loaded)
    d = [torch.tensor(e["divergence"]) for e in summary["entries"]]
    assert not torch.equal(d[0], d[2])


def test_callback_records_counts(tmp_path):
    model, tok = tiny_random_model("llama")
    train = train_config(max_steps=4, batch_size=2, lr=1e-2, logging_steps=1)
    rows = [training_row(tok, train.prompt_format(), s.instruction, s.input, s.output) for s in HARMFUL + HARMLESS]
    path = tmp_path / "sink.jsonl"
    callback = SinkCountCallback(HARMFUL[:2], HARMLESS[:2], every=2, path=path, batch_size=2)
    trainer = ClinicTrainer(model=model, args=train.sft_config(str(tmp_path / "o"), disable_tqdm=True),
                            train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[callback])
    trainer.train()
    assert [r["step"] for r in callback.records] == [0, 2, 4]
    assert all(r["sink_total_heads"] == 8 for r in callback.records)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == callback.records
    logged = [h for h in trainer.state.log_history if "sink_positive_heads" in h]
    assert [h["step"] for h in logged] == [0, 2, 4]
    final = positive_head_count(sink_divergence(trainer.model, tok, HARMFUL[:2], HARMLESS[:2]))
    assert callback.records[-1]["sink_positive_heads"] == final


def test_callback_loads_default_sources(data_dir):
    callback = SinkCountCallback(every=5, n=3)
    harmful, harmless = callback._samples()
    assert len(harmful) == 3 and len(harmless) == 3 and harmful[0].output != harmless[0].output


def test_cli_command_and_errors(tmp_path):
    from clinic.cli import command_parser

    args = command_parser("sink").parse_args(["--model", "tiny-random-llama", "--output", str(tmp_path / "x"), "--n", "0"])
    assert args.n == 0 and args.batch_size == 8 and args.sink_index == 0 and callable(args.func)
    with pytest.raises(ClinicError, match="sink setting n must be at least 1"):
        args.func(args)
    with pytest.raises(ClinicError):
        run_sink_analysis("/no/such/model", tmp_path / "y", n=2)
    with pytest.raises(ClinicError, match="sink_index must be at least 0"):
        run_sink_analysis("tiny-random-llama", tmp_path / "z", n=2, sink_index=-1)
    with pytest.raises(ClinicError, match="interval"):
        SinkCountCallback(HARMFUL, HARMLESS, every=0)
