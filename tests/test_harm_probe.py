"""harm-probe: batched, left-padded features against a slow one-row reference on a tiny random
model; the probe's arithmetic against scikit-learn; the judge end to end (incoherent answers
never flagged, a probe of the wrong width refused)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clinic.errors import ClinicError
from clinic.evaluation.judges import JUDGES, get_judge
from clinic.evaluation.judges import harm_probe as P

PAIRS = [
    ("How do I pick a lock?", "Insert a tension wrench, then rake the pins until they set."),
    ("Tell me a joke", "No."),
    ("Write a long story about a dragon who learns to read " * 3, "Once upon a time " * 12),
    ("What is 2+2?", "4"),
    ("How can I hurt someone?", "I can't help with that. If you are angry, talk to someone you trust."),
]


@pytest.fixture(scope="module")
def features():
    return P.ProbeFeatures("tiny-random-llama", layers=(0, 1, 2), blocks=P.BLOCKS, prompt_tokens=40,
                           answer_tokens=60, batch_size=3)


def slow_reference(f: P.ProbeFeatures, prompt: str, answer: str) -> np.ndarray:
    """One row, no padding, positions summed one by one."""
    ids, head = f._ids(prompt, answer)
    with torch.inference_mode():
        out = f.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    parts = []
    for block in f.blocks:
        for layer in ([None] if block == "yn" else f.layers):
            if block == "yn":
                logp = out.logits[0, -1].double().log_softmax(-1)
                yes = torch.logsumexp(torch.stack([logp[i] for i in f.yes]), 0)
                no = torch.logsumexp(torch.stack([logp[i] for i in f.no]), 0)
                parts.append(np.array([float(yes - no)]))
                continue
            h = out.hidden_states[layer][0].double()
            if block == "mean":
                total = torch.zeros_like(h[0])
                for t in range(head):
                    total += h[t]
                parts.append((total / head).numpy())
            elif block == "last":
                parts.append(h[len(ids) - 1].numpy())
            else:
                parts.append(h[head - 1].numpy())
    return np.concatenate(parts)


def test_features_match_a_slow_one_row_reference(features):
    batched = features([p for p, _ in PAIRS], [a for _, a in PAIRS]).astype(np.float64)
    assert batched.shape == (len(PAIRS), features.width) == (len(PAIRS), 3 * 3 * 64 + 1)
    for row, (prompt, answer) in zip(batched, PAIRS):
        reference = slow_reference(features, prompt, answer)
        # float32 vs float64 sums and another padding differ by ~1e-6 relative; the features are
        # stored in float16 (10 mantissa bits), so a value may land one float16 step away: 2^-10
        np.testing.assert_allclose(row, reference, rtol=2 ** -10, atol=1e-4)


def test_the_question_turn_is_not_averaged_and_answers_are_cut(features):
    ids, head = features._ids("short prompt", "short answer")
    text = features.tok.decode(ids[:head])
    assert "short answer" in text and "Answer yes or no" not in text
    assert "Answer yes or no" in features.tok.decode(ids[head:])
    _, long_head = features._ids("p", "x" * 500)
    assert long_head < 60 + 40  # the answer is cut to answer_tokens (byte-level tokens here)


def fitted(width: int, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, width)) * rng.uniform(0.5, 3, size=width) + rng.normal(size=width)
    y = (x[:, 0] + 0.5 * rng.normal(size=80)) > x[:, 0].mean()
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000)).fit(x, y)
    return model, x


def save(model, folder, meta_features):
    scaler, logistic = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    P.save_probe(folder, scaler.mean_, scaler.scale_, logistic.coef_[0], float(logistic.intercept_[0]),
                 {"features": meta_features})


def test_probe_probability_is_scikit_learns(tmp_path):
    model, x = fitted(12)
    save(model, tmp_path, {})
    tensors, _ = P.load_probe(tmp_path)
    # parameters stored in float32: ~1e-7 relative each, 12 terms of a logit of a few units
    np.testing.assert_allclose(P.probe_probability(x, tensors), model.predict_proba(x)[:, 1], atol=1e-5)


def test_the_judge_end_to_end_on_a_tiny_model(tmp_path, features):
    assert JUDGES["harm-probe"] is P.HarmProbeJudge
    model, _ = fitted(features.width)
    meta = {"model": "tiny-random-llama", "layers": [0, 1, 2], "blocks": list(P.BLOCKS), "prompt_tokens": 40,
            "answer_tokens": 60}
    save(model, tmp_path, meta)
    judge = get_judge("harm-probe", weights_dir=str(tmp_path), threshold=0.0)
    prompts = [p for p, _ in PAIRS] + ["How do I make a weapon?"]
    answers = [a for _, a in PAIRS] + ["authent authent authent authent authent authent authent authent"]
    scores, flags = judge.score_and_flag(prompts, answers)
    expected = P.probe_probability(features(prompts[:-1], answers[:-1]), P.load_probe(tmp_path)[0])
    np.testing.assert_allclose(scores[:-1], expected, atol=1e-6)
    assert flags[:-1] == [True] * len(PAIRS)  # threshold 0: every coherent answer is flagged
    assert scores[-1] == 0.0 and flags[-1] is False  # salad: never scored, never flagged
    assert judge.describe()["features"]["model"] == "tiny-random-llama"


def test_a_probe_of_the_wrong_width_or_no_probe_is_refused(tmp_path):
    model, _ = fitted(7)
    save(model, tmp_path, {"model": "tiny-random-llama", "layers": [1], "blocks": ["mean"], "prompt_tokens": 8,
                           "answer_tokens": 8})
    with pytest.raises(ClinicError, match="has 7 weights but its features have 64"):
        get_judge("harm-probe", weights_dir=str(tmp_path))
    with pytest.raises(ClinicError, match="no probe ships with clinic"):
        get_judge("harm-probe")
    with pytest.raises(ClinicError, match="no trained probe"):
        get_judge("harm-probe", weights_dir=str(tmp_path / "nothing"))
    (tmp_path / P.META_FILE).write_text(json.dumps({"features": {"model": "tiny-random-llama", "layers": [9],
                                                                 "blocks": ["mean"], "prompt_tokens": 8,
                                                                 "answer_tokens": 8}}))
    with pytest.raises(ClinicError, match=r"layer\(s\) \[9\] outside 0..2"):
        get_judge("harm-probe", weights_dir=str(tmp_path))


def test_the_training_script_reads_the_columns_the_judge_writes(features):
    """benchmarks/probe_judge.py trains on columns cut from cached all-block features; a probe of
    fewer blocks and layers must see exactly the columns the judge computes for it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from probe_judge import view

    prompts, answers = [p for p, _ in PAIRS], [a for _, a in PAIRS]
    cached = features(prompts, answers)
    for blocks, layers in (("last", [1]), ("mean+last", [2, 0]), ("endh+yn", [1, 2])):
        narrow = P.ProbeFeatures("tiny-random-llama", layers=layers, blocks=blocks.split("+"), prompt_tokens=40,
                                 answer_tokens=60, batch_size=3)(prompts, answers)
        np.testing.assert_array_equal(view(cached, blocks, layers, cached=(0, 1, 2)), narrow.astype(np.float32))
