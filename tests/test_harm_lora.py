"""harm-lora: trained for a few steps on a tiny random model, saved, reloaded as a judge; its
scores equal an independent unmerged, unbatched forward pass; a killed run resumes."""

from __future__ import annotations

import pytest
import torch

from clinic.errors import ClinicError
from clinic.evaluation.judges import JUDGES, get_judge
from clinic.evaluation.judges import harm_lora as L
from clinic.evaluation.judges.harm_probe import exchange_ids

ROWS = ([{"prompt": f"how do I do bad thing {i}?", "response": f"Step one: do bad thing {i}.", "is_safe": False}
         for i in range(6)]
        + [{"prompt": f"how do I do bad thing {i}?", "response": "I can't help with that.", "is_safe": True}
           for i in range(6)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("harm-lora")
    L.train_harm_lora(ROWS, out, model_name="tiny-random-llama", max_steps=4, batch_size=4, lr=1e-2,
                      prompt_tokens=24, answer_tokens=24, save_steps=2)
    return out


def test_the_judge_scores_what_an_unmerged_one_row_forward_gives(trained):
    from peft import PeftModel

    assert JUDGES["harm-lora"] is L.HarmLoraJudge
    judge = get_judge("harm-lora", weights_dir=str(trained), batch_size=5)
    prompts, answers = [r["prompt"] for r in ROWS], [r["response"] for r in ROWS]
    scores = judge.score(prompts, answers)
    fresh, _ = L.classifier_model("tiny-random-llama")
    assert not torch.equal(fresh.score.weight, judge.model.score.weight)  # the trained head was saved and loaded
    base, tok = L.classifier_model("tiny-random-llama")
    reference = PeftModel.from_pretrained(base, str(trained)).eval()  # LoRA kept apart, not merged
    for prompt, answer, score in zip(prompts, answers, scores):
        ids, _ = exchange_ids(tok, prompt, answer, 24, 24)
        with torch.inference_mode():
            logits = reference(input_ids=torch.tensor([ids])).logits[0].double()
        # merging adds B·A into W (float32): ~1e-7 relative per weight; batching pads with masks
        assert score == pytest.approx(float(torch.softmax(logits, -1)[1]), abs=1e-5)
    salad = judge.score_and_flag(["q"], ["authent authent authent authent authent authent authent authent"])
    assert salad == ([0.0], [False])
    assert judge.describe()["model"] == "tiny-random-llama"


def test_a_killed_run_resumes_from_its_checkpoint(trained, tmp_path):
    import json

    assert not json.loads((trained / L.META_FILE).read_text())["training"]["resumed_from"]
    L.train_harm_lora(ROWS, trained, model_name="tiny-random-llama", max_steps=6, batch_size=4, lr=1e-2,
                      prompt_tokens=24, answer_tokens=24, save_steps=2)
    assert json.loads((trained / L.META_FILE).read_text())["training"]["resumed_from"] == "checkpoint-4"


def test_no_weights_is_a_one_line_error(tmp_path):
    with pytest.raises(ClinicError, match="no weights ship with clinic"):
        get_judge("harm-lora")
    with pytest.raises(ClinicError, match="no trained weights in"):
        get_judge("harm-lora", weights_dir=str(tmp_path))


def test_leave_one_out_trains_each_fold_without_its_set_and_scores_only_that_set(tmp_path, monkeypatch):
    """benchmarks/lora_judge.py --loo: the fold for a set never trains on it, is scored on the
    first gold set's answers to that set alone, and a fold already trained is reused."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import lora_judge
    import probe_judge
    from train_judge import LEAVE_OUT

    sets = list(LEAVE_OUT)
    rows = [dict(r, set=sets[i % 3], w=1) for i, r in enumerate(ROWS)]
    asked = []

    def training_rows(leave_out=None):
        asked.append(leave_out)
        return [r for r in rows if r["set"] != leave_out]

    first = probe_judge.GOLD_FILES[0].parent.name
    gold = ([dict(r, gold=first, label="harmful" if not r["is_safe"] else "not_harmful") for r in rows]
            + [dict(rows[0], gold=first, label="undecided"), dict(rows[1], gold="gold-protocol", label="harmful")])
    monkeypatch.setattr(lora_judge, "training_rows", training_rows)
    monkeypatch.setattr(probe_judge, "gold_rows", lambda: gold)  # read by first_gold_rows
    options = dict(model="tiny-random-llama", max_steps=2)
    result = lora_judge.leave_one_out(tmp_path, None, tmp_path / "loo.json", **options)
    assert asked == sets
    for name in sets:
        meta = json.loads((tmp_path / name / L.META_FILE).read_text())
        assert meta["leave_out"] == name and meta["training"]["n_rows"] == 8
        assert result["sets"][name]["left_out"]["n"] == 4  # its own decided first-gold answers only
    lora_judge.leave_one_out(tmp_path, None, tmp_path / "loo.json", **options)
    assert asked == sets  # nothing retrained



def test_heldout_scores_harmful_as_the_positive_class(tmp_path, monkeypatch):
    """benchmarks/lora_judge.py --heldout: the judge's flags against held-out BeaverTails labels,
    harmful (``is_safe`` false) the positive class. A stand-in judge that flags every answer, on
    8 harmful and 4 safe rows: 8 of 12 right (the labels read the wrong way round would give 4)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import lora_judge

    import clinic.evaluation.judges as judges
    import clinic.evaluation.judges.classifier as classifier

    class FlagAll:
        def flags(self, prompts, responses):
            return [True] * len(responses)

    rows = [dict(r, is_safe=i >= 8) for i, r in enumerate(ROWS)]
    asked = []
    monkeypatch.setattr(classifier, "heldout_rows", lambda: rows)
    monkeypatch.setattr(judges, "get_judge", lambda name, **kw: asked.append((name, kw)) or FlagAll())
    result = lora_judge.heldout(tmp_path / "weights", out=tmp_path / "heldout.json")
    assert asked == [("harm-lora", {"weights_dir": str(tmp_path / "weights")})]
    assert result["heldout"]["n"] == 12 and result["heldout"]["accuracy"] == pytest.approx(8 / 12, abs=1e-3)
    assert result["heldout"]["recall"] == 1.0
    assert json.loads((tmp_path / "heldout.json").read_text())["heldout"] == result["heldout"]
