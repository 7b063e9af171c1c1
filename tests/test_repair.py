"""The post-fine-tuning repair stage: each method against a direct computation on small tensors
and tiny models, every tiny architecture, and the CLI chain align -> finetune -> repair -> evaluate."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _alignment_support import chains, cpu_settings, quiet  # noqa: F401

from clinic.errors import ClinicError
from clinic.repair.base import RepairContext, RepairConfig, lora_layers
from clinic.stages.repair import _fine_tuned, run_repair

ARCHS = ("llama", "qwen2", "gemma", "mistral")


def context(ft, settings: RepairConfig | None = None, references: dict | None = None) -> RepairContext:
    from clinic.data.formatting import PromptFormat

    chain, record, config = _fine_tuned(str(ft))
    return RepairContext(chain, PromptFormat(**record["prompt_format"]), settings or RepairConfig(batch_size=4),
                         config, references, progress=False)


def adapter_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


# --------------------------------------------------------------------------------------------
# registry


# --------------------------------------------------------------------------------------------
# SafeLoRA: projection and selection against numpy


def _safelora_case(seed: int = 0):
    """A tiny LoRA model with random B, and base/aligned weights differing by random rank-2
    updates, except one layer where they are equal."""
    from clinic.modeling.lora import LoraFields
    from clinic.modeling.models import attach_lora, tiny_random_model

    model, _tok = tiny_random_model("llama", seed=seed)
    base = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    peft = attach_lora(model, LoraFields(lora_r=4, lora_alpha=8.0))
    gen = torch.Generator().manual_seed(seed)
    aligned = {}
    for i, (name, layer) in enumerate(lora_layers(peft)):
        b = layer.lora_B["default"].weight
        with torch.no_grad():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        w = base[name]
        delta = torch.randn(w.shape[0], 2, generator=gen) @ torch.randn(2, w.shape[1], generator=gen)
        if i % 3 == 0:  # an update close to the alignment direction: a high cosine
            with torch.no_grad():
                b.copy_(delta @ layer.lora_A["default"].weight.T.detach() * 0.1)
        aligned[name] = w if i == 5 else w + 0.05 * delta
    weights = {"base": base, "aligned": aligned}
    return peft, weights


def _numpy_safelora(peft, weights, rule):
    """Expected cosines and new B per layer, computed with numpy from the definitions."""
    out = {}
    for name, layer in lora_layers(peft):
        v = (weights["aligned"][name] - weights["base"][name]).double().numpy()
        if not v.any():
            continue
        c = v @ v.T / np.linalg.norm(v, "fro")
        b = layer.lora_B["default"].weight.detach().double().numpy()
        a = layer.lora_A["default"].weight.detach().double().numpy()
        dw = b @ a
        cdw = c @ dw
        cos = float((dw * cdw).sum() / (np.linalg.norm(dw) * np.linalg.norm(cdw)))
        out[name] = (cos, c @ b, b)
    chosen = rule({n: v[0] for n, v in out.items()})
    return {n: (cos, new if n in chosen else old) for n, (cos, new, old) in out.items()}


@pytest.mark.parametrize("select", ["threshold", "number"])
def test_safelora_projects_the_layers_the_rule_selects(select):
    from clinic.repair.safelora import SafeLoRAConfig, safelora

    peft, weights = _safelora_case()
    cfg = SafeLoRAConfig(select=select, threshold=0.4, num_layers=4)
    if select == "threshold":
        rule = lambda cos: {n for n, c in cos.items() if c <= 0.4}  # noqa: E731
    else:
        rule = lambda cos: set(sorted(cos, key=cos.get)[:4])  # noqa: E731
    expected = _numpy_safelora(peft, weights, rule)
    ctx = SimpleNamespace(model=peft, linear_weights=lambda which: weights[which])
    info = safelora(ctx, cfg)
    cosines = {row["layer"]: row["cosine"] for row in info["per_layer"]}
    projected = {row["layer"] for row in info["per_layer"] if row["projected"]}
    assert info["skipped_zero_alignment"] == [lora_layers(peft)[5][0]]
    assert set(cosines) == set(expected)
    assert 0 < len(projected) < len(expected)  # the case exercises both branches
    for name, layer in lora_layers(peft):
        if name not in expected:
            continue
        cos, b_expected = expected[name]
        assert cosines[name] == pytest.approx(cos, abs=1e-6)
        np.testing.assert_allclose(layer.lora_B["default"].weight.detach().double().numpy(), b_expected,
                                   rtol=1e-5, atol=1e-7)
    if select == "number":
        assert len(projected) == 4


def test_safelora_without_an_alignment_adapter_needs_named_models(chains, tmp_path):
    ft = chains("llama")
    record = json.loads((ft / "run.json").read_text())
    assert len(record["model_chain"]["adapters"]) == 2  # base + align + finetune: the default references exist
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    direct = run_train("finetune", model="tiny-random-llama", data=DataConfig(task="sst2", n=4, poison_ratio=0.5),
                       train=train_config("cpu-align", max_steps=1, batch_size=4, logging_steps=1), output=tmp_path / "ft")
    with pytest.raises(ClinicError, match="--base-model and --aligned-model"):
        run_repair(str(direct), "safelora", tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
    # with both named (here: the base twice, no alignment direction anywhere) the error names that instead
    with pytest.raises(ClinicError, match="no alignment direction"):
        run_repair(str(direct), "safelora", tmp_path / "rep",
                   {"base_model": "tiny-random-llama", "aligned_model": "tiny-random-llama"})
    assert not (tmp_path / "rep").exists()


def test_safelora_follows_a_fully_fine_tuned_alignment_back_to_its_base(tmp_path, data_dir):
    """base -> full-FT align -> LoRA finetune: the aligned model is the align run's model/, the
    base the model its config.yaml records; the aligned weights read from the loaded model equal
    the aligned chain loaded anew."""
    from clinic.modeling.training import train_config
    from clinic.modeling.chain import ModelChain, load_chain
    from clinic.stages.train import DataConfig, run_train
    from clinic.stages.repair import references

    quiet()
    train = train_config("cpu-align", max_steps=1, batch_size=4, logging_steps=1, lr=1e-2)
    align = run_train("align", model="tiny-random-llama", train=train_config("cpu-align", max_steps=1, batch_size=4,
                      logging_steps=1, lr=1e-3, full_ft=True), data=DataConfig(source="refusals", n=4), output=tmp_path / "al")
    ft = run_train("finetune", model=str(align), train=dataclasses.replace(train, max_length=300),
                   data=DataConfig(task="sst2", n=4, poison_ratio=0.5), output=tmp_path / "ft")
    chain, _record, _config = _fine_tuned(str(ft))
    refs = references(chain, None, None)
    assert refs["base"] == ModelChain("tiny-random-llama", [])
    assert refs["aligned"] == ModelChain(str(align / "model"), [])
    ctx = context(ft, references=refs)
    shortcut = ctx.linear_weights("aligned")
    loaded, _tok = load_chain(refs["aligned"])
    modules = dict(loaded.named_modules())
    for name, weight in shortcut.items():
        torch.testing.assert_close(weight, modules[name].weight)
    ctx.close()
    out = run_repair(str(ft), "safelora", tmp_path / "rep", {"select": "threshold", "threshold": 1.0})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["layers"] == metrics["projected"] > 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["settings"]["max_length"] == 300  # the fine-tuning's


# --------------------------------------------------------------------------------------------
# Antidote: Wanda scores and the mask


def test_wanda_scores_and_top_mask_by_hand():
    from clinic.repair.antidote import wanda_scores, top_mask

    w = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 3.0, 1.0]])
    sq = torch.tensor([4.0, 1.0, 9.0])  # ‖X_j‖ = 2, 1, 3
    scores = wanda_scores(w, sq)
    torch.testing.assert_close(scores, torch.tensor([[2.0, 2.0, 1.5], [0.2, 3.0, 3.0]]))
    # 3 of 6: 3.0, 3.0 and the first 2.0 (ties go to the lower index)
    assert top_mask(scores, 0.5).tolist() == [[True, False, False], [False, True, True]]
    assert top_mask(scores, 0.2).sum() == 1 and top_mask(scores, 1.0).all()


def test_input_norms_count_only_real_tokens():
    from clinic.repair.antidote import InputNorms

    layer = torch.nn.Linear(3, 2)
    norms = InputNorms({"l": layer})
    x = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3)
    norms.token_mask = torch.tensor([[1, 1, 0, 1]])
    layer(x)
    norms.remove()
    kept = x[0, [0, 1, 3]]
    torch.testing.assert_close(norms.sums["l"], kept.double().pow(2).sum(0))


def test_antidote_zeroes_the_top_scored_adapter_weights(chains, tmp_path):
    """The repaired adapter against an independent computation: hooks on every LoRA linear,
    ‖X_j‖ over the non-padding tokens of the harmful batches, |W| ‖X_j‖, top 20 % per layer."""
    from clinic.data.mixture import take_qa
    from clinic.repair.antidote import AntidoteConfig, antidote

    ft = chains("llama")
    cfg = AntidoteConfig(fraction=0.2, n_harmful=6)
    ref = context(ft)
    harmful, _ = take_qa("beavertails-harmful", 6, 0, "first")
    ws = ref.workspace({"harmful": harmful})
    modules = {}
    for name, layer in lora_layers(ws.model):
        modules[f"{name}.A"], modules[f"{name}.B"] = layer.lora_A["default"], layer.lora_B["default"]
    inputs = {n: [] for n in modules}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: inputs[n].append(args[0].detach()))
             for n, m in modules.items()]
    masks = []
    with torch.no_grad():
        for _rows, batch in ws.batches("harmful"):
            masks.append(batch["attention_mask"].bool())
            ws.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in hooks:
        h.remove()
    expected_zero = {}
    for n, m in modules.items():
        x = torch.cat([xs[mask] for xs, mask in zip(inputs[n], masks)])  # [tokens, in]
        score = m.weight.detach().abs() * torch.linalg.vector_norm(x, dim=0)
        k = round(0.2 * score.numel())
        threshold = score.flatten().sort(descending=True).values[k - 1]
        expected_zero[n] = score >= threshold
    ref.close()

    ctx = context(ft)
    before = {n: t.clone() for n, t in ((n, p.detach()) for n, p in ctx.model.named_parameters() if "lora_" in n)}
    info = antidote(ctx, cfg)
    assert info["weights_zeroed"] == sum(round(0.2 * m.weight.numel()) for m in modules.values())
    for name, layer in lora_layers(ctx.model):
        for part, key in (("A", "lora_A"), ("B", "lora_B")):
            weight = getattr(layer, key)["default"].weight.detach()
            zero = expected_zero[f"{name}.{part}"]
            assert torch.all(weight[zero] == 0), f"{name}.{part}: a top-scored weight survived"
            original = before[next(n for n in before if n.endswith(f"{name}.{key}.default.weight"))]
            torch.testing.assert_close(weight[~zero], original[~zero])
    ctx.close()


# --------------------------------------------------------------------------------------------
# Panacea: the perturbation is the normalised ascent direction of the harmful loss


def _hand_harmful_gradient(ft, n: int):
    """Mean (over samples) of each sample's mean token CE on its answer, and its gradient in the
    adapter parameters, computed directly."""
    from clinic.data.mixture import take_qa

    ctx = context(ft)
    harmful, _ = take_qa("beavertails-harmful", n, 0, "first")
    ws = ctx.workspace({"harmful": harmful})
    params = [p for p in ws.model.parameters() if p.requires_grad]
    losses = []
    for _rows, batch in ws.batches("harmful"):
        logits = ws.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        for i in range(labels.shape[0]):
            keep = labels[i] != -100
            losses.append(torch.nn.functional.cross_entropy(logits[i][keep], labels[i][keep]))
    loss = torch.stack(losses).mean()
    grads = torch.autograd.grad(loss, params)
    ctx.close()
    return loss.item(), [g.detach() for g in grads]


def test_panacea_one_step_is_rho_times_the_normalised_harmful_gradient(chains):
    from clinic.repair.panacea import PanaceaConfig, panacea

    ft = chains("llama")
    h, grads = _hand_harmful_gradient(ft, 4)
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads)).item()
    ctx = context(ft)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    info = panacea(ctx, PanaceaConfig(rho=0.5, steps=1, task_weight=0.0, loss_cap=1e9, n_harmful=4))
    for p, b, g in zip(params, before, grads):
        torch.testing.assert_close(p.detach() - b, 0.5 * g / norm, rtol=1e-4, atol=1e-7)
    assert info["harmful_loss_before"] == pytest.approx(h, rel=1e-5)
    assert info["perturbation_norm"] == pytest.approx(0.5, rel=1e-5)
    assert info["harmful_loss_after"] > info["harmful_loss_before"]  # the perturbation raises the harmful loss
    ctx.close()


def test_panacea_stays_in_the_ball_and_the_cap_stops_the_harmful_push(chains):
    from clinic.repair.panacea import PanaceaConfig, panacea

    ft = chains("llama")
    ctx = context(ft)
    info = panacea(ctx, PanaceaConfig(rho=0.3, steps=3, task_weight=1.0, loss_cap=1e9, n_harmful=4, n_task=4))
    assert info["perturbation_norm"] <= 0.3 + 1e-6 and len(info["steps"]) == 3
    assert info["harmful_loss_after"] > info["harmful_loss_before"]
    ctx.close()
    ctx = context(ft)  # every harmful loss is above a cap of 0.01: no gradient, no perturbation
    params = [p.detach().clone() for p in ctx.model.parameters() if p.requires_grad]
    info = panacea(ctx, PanaceaConfig(rho=0.3, steps=3, task_weight=0.0, loss_cap=0.01, n_harmful=4))
    assert info["perturbation_norm"] == 0.0
    for p, b in zip((p for p in ctx.model.parameters() if p.requires_grad), params):
        torch.testing.assert_close(p.detach(), b)
    ctx.close()


# --------------------------------------------------------------------------------------------
# every architecture, through the stage


def test_cli_align_finetune_repair_evaluate(tmp_path, capsys, data_dir):
    from clinic.cli import main

    quiet()
    common = ["--max-steps", "1", "--batch-size", "4", "--logging-steps", "1"]
    assert main(["align", "--model", "tiny-random-llama", "--n", "4", *common, "--output", str(tmp_path / "al")]) == 0
    assert main(["finetune", "--model", str(tmp_path / "al"), "--task", "sst2", "--n", "4", "--poison-ratio", "0.5",
                 *common, "--output", str(tmp_path / "ft")]) == 0
    assert main(["repair", "--model", str(tmp_path / "ft"), "--method", "antidote", "--n-harmful", "4",
                 "--fraction", "0.3", "--output", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "antidote:" in out and "adapter weights zeroed" in out
    config = (tmp_path / "rep" / "config.yaml").read_text()
    assert "fraction: 0.3" in config and "stage: repair" in config
    assert (tmp_path / "rep" / "DONE").exists() and (tmp_path / "rep" / "clinic.json").exists()
    assert main(["evaluate", "--model", str(tmp_path / "rep"), "--n-prompts", "2", "--n-task", "2", "--judges",
                 "keyword", "--max-new-tokens", "4", "--output", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert ev["model_chain"]["adapters"][-1] == str(tmp_path / "rep" / "adapter")
    # a repaired model is not a fine-tuning of another option's method
    assert main(["repair", "--model", str(tmp_path / "ft"), "--method", "safelora", "--fraction", "0.2",
                 "--output", str(tmp_path / "rep2")]) == 2
    assert "option --fraction does not apply to method 'safelora'" in capsys.readouterr().err
    assert not (tmp_path / "rep2").exists()
