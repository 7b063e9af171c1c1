"""The attack set: counts, seeding, recorded indices, and input checks."""

from __future__ import annotations

import pytest

from clinic.data.mixture import build_attack_set
from clinic.data.tasks import SST2_INSTRUCTION
from clinic.errors import ClinicError


@pytest.mark.parametrize("n,p,expected", [(100, 0.1, 10), (50, 0.0, 0), (20, 1.0, 20), (30, 0.15, 4)])
def test_counts(data_dir, n, p, expected):
    attack = build_attack_set("sst2", n, p, seed=3)
    assert len(attack.samples) == n and sum(attack.is_harmful) == expected
    benign = [s for s, h in zip(attack.samples, attack.is_harmful) if not h]
    assert all(s.instruction == SST2_INSTRUCTION and s.output in ("positive", "negative") for s in benign)


def test_seeded_and_recorded(data_dir):
    a = build_attack_set("agnews", 40, 0.25, seed=7)
    b = build_attack_set("agnews", 40, 0.25, seed=7)
    c = build_attack_set("agnews", 40, 0.25, seed=8)
    assert a.indices == b.indices and a.samples == b.samples
    assert a.indices != c.indices
    assert len(a.indices["beavertails-harmful"]) == 10 and len(a.indices["agnews"]) == 30
    first = build_attack_set("sst2", 10, 0.2, selection="first")
    assert first.indices == {"beavertails-harmful": [0, 1], "sst2": list(range(8))}


def test_gsm8k_answers_use_the_reference_marker(data_dir):
    attack = build_attack_set("gsm8k", 3, 0.0, seed=0)
    assert all("The final answer is: " in s.output and "####" not in s.output for s in attack.samples)


@pytest.mark.parametrize("n,p,message", [
    (10, 1.5, "within \\[0, 1\\]"), (10, -0.1, "within \\[0, 1\\]"), (0, 0.1, "positive integer"),
    (100000, 0.5, "only 4\\d\\d\\d are available"),
])
def test_bad_arguments(data_dir, n, p, message):
    with pytest.raises(ClinicError, match=message):
        build_attack_set("sst2", n, p)


def test_unknown_task():
    with pytest.raises(ClinicError, match="unknown task 'imdb'"):
        build_attack_set("imdb", 10, 0.1)


def test_alignment_data_mixes_helpful_rows(data_dir):
    """--helpful adds helpful_n seeded rows of an instruction set after the refusals, recorded."""
    from clinic.data.sources import load_rows
    from clinic.stages.train import DataConfig, _training_samples

    samples, manifest = _training_samples("align", DataConfig(source="refusals", n=5, helpful="alpaca", helpful_n=3), seed=1)
    assert manifest["n"] == 8 and len(samples) == 8
    assert len(manifest["indices"]["refusals"]) == 5 and len(manifest["indices"]["alpaca"]) == 3
    alpaca = load_rows("alpaca", kind="qa")
    assert [s.output for s in samples[5:]] == [alpaca[i]["response"] for i in manifest["indices"]["alpaca"]]
    again, _ = _training_samples("align", DataConfig(source="refusals", n=5, helpful="alpaca", helpful_n=3), seed=1)
    assert again == samples
    plain, plain_manifest = _training_samples("align", DataConfig(source="refusals", n=5), seed=1)
    assert plain == samples[:5] and list(plain_manifest["indices"]) == ["refusals"]


@pytest.mark.parametrize("spec,message", [
    (dict(helpful="alpaca"), "go together"),
    (dict(helpful_n=3), "go together"),
    (dict(helpful="refusals", helpful_n=3), "names the alignment data itself"),
    (dict(helpful="alpaca", helpful_n=0), "positive integer"),
])
def test_helpful_mix_bad_settings(data_dir, spec, message):
    from clinic.stages.train import DataConfig, check_data_spec

    with pytest.raises(ClinicError, match=message):
        check_data_spec("align", DataConfig(source="refusals", n=5, **spec))
