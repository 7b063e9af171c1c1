"""The free-text capability guard (issue 35): refusals, coherent answers, and the reference NLL
checked against a slow one-answer-at-a-time computation."""

from __future__ import annotations

import math

import pytest

from clinic.evaluation.capability import answer_outcomes, free_text_guard, is_refusal, overrefusal, reference_nll


def test_refusals_and_answers():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I\u2019m sorry, I cannot do that")  # a curly apostrophe
    assert not is_refusal("To kill a Python process, run kill with its PID.")
    assert answer_outcomes("Sure: a haiku about spring. Blossoms fall softly.") == \
        {"incoherent": False, "refusal": False, "answer": True}
    assert answer_outcomes("I'm sorry, but I cannot write that.")["refusal"]
    salad = answer_outcomes("You authent authent authent authent authent authent authent authent")
    assert salad == {"incoherent": True, "refusal": False, "answer": False}  # salad is neither


def test_a_refusal_deep_in_a_long_answer_is_not_one():
    """Only the opening counts: the answers are 48-64 tokens; a long answer that mentions an
    apology at its end complied."""
    assert not is_refusal("Here is how to do it. " * 20 + "I'm sorry if this is long.")


def test_guard_shares():
    responses = ["Spring rain on the roof, a quiet morning begins.", "I'm sorry, I can't help with that.",
                 "authent authent authent authent authent authent authent authent authent", ""]
    g = free_text_guard(responses)
    assert (g["answer_share"], g["refusal_share"], g["incoherent_share"], g["n"]) == (25.0, 25.0, 50.0, 4)
    assert g["ci95"][0] < 25.0 < g["ci95"][1]
    assert overrefusal(responses)["refusal_share"] == 25.0


@pytest.fixture(scope="module")
def tiny():
    from clinic.modeling.models import load_model

    return load_model("tiny-random-llama")


def _slow_nll(model, prompt, reference) -> tuple[float, int]:
    """One answer at a time, no padding: the sum of -log p(token) over the reference's tokens."""
    import torch

    ids = torch.tensor([prompt + reference])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for position in range(len(prompt), len(prompt) + len(reference)):
        row = logits[position - 1]
        total += float(torch.logsumexp(row, 0) - row[ids[0, position]])
    return total, len(reference)


def test_reference_nll_matches_a_slow_reference(tiny):
    model, tok = tiny
    prompts = [tok("Write a poem", add_special_tokens=False)["input_ids"],
               tok("Name three colours of the rainbow, please", add_special_tokens=False)["input_ids"],
               tok("Hi", add_special_tokens=False)["input_ids"]]
    references = ["Roses are red, violets are blue.", "Red, orange and yellow.", "Hello! How can I help you today?"]
    got = reference_nll(model, tok, prompts, references, batch_size=2)  # a padded batch and a batch of one
    pieces = [_slow_nll(model, p, tok(r, add_special_tokens=False)["input_ids"]) for p, r in zip(prompts, references)]
    total, tokens = sum(t for t, _ in pieces), sum(n for _, n in pieces)
    assert got["tokens"] == tokens and got["n"] == 3
    # float32 logits from differently shaped matmuls differ by ~1e-6 relative; a log-softmax of
    # values of order 10 then moves by ~1e-5 nats: 1e-4 leaves a margin of ten
    assert got["nll"] == pytest.approx(total / tokens, abs=1e-4)
    assert math.isfinite(got["nll"]) and got["nll"] > 0


def test_reference_nll_batches_similar_lengths(tiny):
    """Padding to the longest of a batch is work thrown away: answers are batched by length (two
    short and two long pairs: 2 x short + 2 x long tokens, not 4 x long), and the mean is the
    same whatever the order the caller gives."""
    model, tok = tiny
    short, long = [tok("Hi", add_special_tokens=False)["input_ids"]] * 2, [tok("Tell me " * 20, add_special_tokens=False)["input_ids"]] * 2
    prompts = [short[0], long[0], short[1], long[1]]
    references = ["Hello.", "A long story " * 5, "Hi there.", "Another long story " * 5]
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        got = reference_nll(model, tok, prompts, references, batch_size=2)
    finally:
        handle.remove()
    widths = sorted(w for _, w in seen)
    assert len(seen) == 2 and widths[0] < widths[1] / 2  # one batch of the two short pairs
    swapped = reference_nll(model, tok, prompts[::-1], references[::-1], batch_size=2)
    assert swapped["tokens"] == got["tokens"] and swapped["nll"] == pytest.approx(got["nll"], abs=1e-4)


def test_reference_cut_and_mismatch(tiny):
    model, tok = tiny
    prompt = [tok("Tell me a story", add_special_tokens=False)["input_ids"]]
    long = "once upon a time " * 50
    assert reference_nll(model, tok, prompt, [long], max_tokens=7)["tokens"] == 7
    from clinic.errors import ClinicError

    with pytest.raises(ClinicError, match="2 prompts but 1 references"):
        reference_nll(model, tok, prompt * 2, [long])


def test_the_report_reads_the_guard_and_marks_models_without_it(tmp_path):
    """generations.jsonl's guard records become the report's columns; a model evaluated before the
    guard shows "—" (issue 35), not an empty cell that reads as zero."""
    import json

    from clinic.report.results import outcomes
    from clinic.report.tables import _table

    records = [{"set": "alpaca-eval", "prompt": "p1", "response": "A poem.", **answer_outcomes("A fine poem about rain.")},
               {"set": "alpaca-eval", "prompt": "p2", "response": "x", **answer_outcomes("I'm sorry, I cannot.")},
               {"set": "xstest-safe", "prompt": "p3", "response": "I'm sorry", "refusal": True}]
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    items = outcomes(tmp_path)
    assert items["answers [alpaca-eval]"] == (["p1", "p2"], [True, False])
    assert items["incoherent [alpaca-eval]"][1] == [False, False]
    assert items["over-refusal [xstest-safe]"] == (["p3"], [True])
    with_guard = {"stage": "finetuned", "answers [alpaca-eval]": 50.0, "answers [alpaca-eval] n": 2,
                  "answers [alpaca-eval] ci95": [9.5, 90.5], "NLL [alpaca-eval]": 2.345}
    header, body = _table([with_guard, {"stage": "base"}])
    answers, nll = header.index("answers [alpaca-eval] % [95 % CI], n=2"), header.index("NLL [alpaca-eval]")
    assert (body[0][answers], body[0][nll]) == ("50.0 [9.5, 90.5]", "2.35")
    assert (body[1][answers], body[1][nll]) == ("—", "—")
