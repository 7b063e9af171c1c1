"""Per-sample sink values and the bootstrap of positive-head counts (clinic.sink.bootstrap),
against an eager one-sample-at-a-time reference and a plain loop over resamples."""

from __future__ import annotations

import json

import pytest
import torch

from clinic.data.samples import Sample, probe_ids
from clinic.errors import ClinicError
from clinic.modeling.models import tiny_random_model
from clinic.sink.bootstrap import (
    _counts,
    _indices,
    load_per_sample,
    paired_count_difference,
    positive_heads_interval,
    save_per_sample,
)
from clinic.sink.divergence import sink_attention_per_sample

SAMPLES = [Sample(f"How do I fix thing {i}?", "", "Like this" + " and so on" * (3 * i % 5)) for i in range(6)]


def test_per_sample_values_are_each_samples_own_in_the_given_order():
    """Batched (padded, length-sorted) rows equal each sample run alone with eager attention,
    in the order the samples were given."""
    model, tok = tiny_random_model("llama", seed=2)
    ref, _ = tiny_random_model("llama", seed=2)
    ref.set_attn_implementation("eager")
    got = sink_attention_per_sample(model, tok, SAMPLES, batch_size=4)
    assert got.shape == (6, 2, 4)
    for i, s in enumerate(SAMPLES):
        ids = torch.tensor([probe_ids(tok, s, 512)])
        with torch.no_grad():
            attn = ref(input_ids=ids, output_attentions=True).attentions
        want = torch.stack([a[0, :, 1:, 0].mean(-1) for a in attn])  # [L, H]
        # probabilities in [0, 1], means of <= 40 of them: fp32 rounding stays far below 1e-5
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)


def _loop_counts(harmful, harmless, idx_m, idx_r):
    """The slow reference: one resample at a time, one head at a time."""
    out = []
    for m, r in zip(idx_m.tolist(), idx_r.tolist()):
        count = 0
        for layer in range(harmful.shape[1]):
            for head in range(harmful.shape[2]):
                a = sum(harmful[i, layer, head].item() for i in m) / len(m)
                b = sum(harmless[i, layer, head].item() for i in r) / len(r)
                count += a - b > 0
        out.append(count)
    return out


def test_resampled_counts_equal_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    harmful, harmless = torch.rand(7, 2, 3, generator=gen), torch.rand(5, 2, 3, generator=gen)
    idx_m, idx_r = _indices(12, 7, 5, seed=3)
    assert _counts(harmful, harmless, idx_m, idx_r).tolist() == _loop_counts(harmful, harmless, idx_m, idx_r)


def _clear_cut(n=30, seed=0):
    """Heads 0-2 far more attended on harmful text, heads 3-5 far less, whatever the resample."""
    gen = torch.Generator().manual_seed(seed)
    harmful = torch.rand(n, 1, 6, generator=gen) * 0.1
    harmless = torch.rand(n, 1, 6, generator=gen) * 0.1
    harmful[:, 0, :3] += 0.5
    harmless[:, 0, 3:] += 0.5
    return harmful, harmless


def test_a_count_no_resample_can_change_has_a_point_interval():
    harmful, harmless = _clear_cut()
    assert positive_heads_interval(harmful, harmless, n_boot=300) == [3.0, 3.0]


def test_a_noisy_head_widens_the_interval():
    harmful, harmless = _clear_cut()
    gen = torch.Generator().manual_seed(5)
    harmful[:, 0, 5] = torch.randn(30, generator=gen)  # same distribution on both sides
    harmless[:, 0, 5] = torch.randn(30, generator=gen)
    low, high = positive_heads_interval(harmful, harmless, n_boot=500)
    assert low == 3.0 and high == 4.0


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    a = _clear_cut()
    result = paired_count_difference(a, a, n_boot=200)
    assert result["difference"] == 0 and result["ci95"] == [0.0, 0.0] and result["share_b_above_a"] == 0.0


def test_paired_difference_counts_a_head_that_turned_positive():
    a = _clear_cut()
    b = (a[0].clone(), a[1].clone())
    b[0][:, 0, 3] += 1.0  # head 3: far less attended on harmful text in a, far more in b
    result = paired_count_difference(a, b, n_boot=200)
    assert result["difference"] == 1 and result["ci95"] == [1.0, 1.0] and result["share_b_above_a"] == 1.0


def test_paired_needs_the_same_samples():
    a = _clear_cut(n=30)
    b = _clear_cut(n=20)
    with pytest.raises(ClinicError, match="same samples"):
        paired_count_difference(a, b, n_boot=10)
    with pytest.raises(ClinicError, match=r"\[N, L, H\]"):
        positive_heads_interval(torch.zeros(3, 4), torch.zeros(3, 4))


def test_saved_values_load_back(tmp_path):
    harmful, harmless = _clear_cut()
    save_per_sample(tmp_path, harmful, harmless)
    got = load_per_sample(tmp_path)
    assert torch.equal(got[0], harmful) and torch.equal(got[1], harmless)
    with pytest.raises(ClinicError, match="predates per-sample values"):
        load_per_sample(tmp_path / "missing")


def test_the_analysis_writes_the_interval_and_the_values(tmp_path, data_dir):
    from clinic.stages.sink import run_sink_analysis

    out = run_sink_analysis("tiny-random-llama", tmp_path / "sink", n=4, batch_size=2, max_length=64)
    entry = json.loads((out / "sink.json").read_text())["entries"][-1]
    low, high = entry["positive_heads_ci95"]
    assert 0 <= low <= high <= entry["total_heads"]
    harmful, harmless = load_per_sample(out)
    assert harmful.shape == (4, entry["layers"], entry["heads"]) == harmless.shape
    d = harmful.mean(0) - harmless.mean(0)
    assert int((d > 0).sum()) == entry["positive_heads"]
