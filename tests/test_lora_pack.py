"""clinic.modeling.lora_pack: the budgeted SVD + int8 packing of a LoRA adapter (how the demo's
alignment is shipped), checked against hand-made expectations and against PEFT's own merge."""

from __future__ import annotations

import json

import pytest
import torch

from clinic.modeling.lora_pack import FORMAT, choose_components, pack_lora, unpack_lora


def test_greedy_choice_by_energy_per_byte():
    # module "a" costs 10 bytes a component, "b" 40; b's first component carries more energy but
    # less per byte (0.9 / 40 < 0.5 / 10 and < 0.3 / 10), so a's two go first
    energies = {"a": [0.5, 0.3, 0.2], "b": [0.9, 0.1]}
    costs = {"a": 10, "b": 40}
    assert choose_components(energies, costs, budget=20) == {"a": 2, "b": 0}
    # order by bytes: a 0.05, a 0.03, b 0.0225, a 0.02 per byte; b's first does not fit in 50, a's third does
    # (by energy alone it would be b first: {"a": 1, "b": 1})
    assert choose_components(energies, costs, budget=50) == {"a": 3, "b": 0}
    assert choose_components(energies, costs, budget=60) == {"a": 2, "b": 1}  # a's third (0.02/B) < b's first
    assert choose_components(energies, costs, budget=70) == {"a": 3, "b": 1}
    assert choose_components(energies, costs, budget=10_000) == {"a": 3, "b": 2}  # everything fits
    # components are taken in order within a module, even where a later one would fit better
    assert choose_components({"c": [0.6, 0.4]}, {"c": 5}, budget=4) == {"c": 0}


def _adapter(tmp_path, model, rank=4, alpha=8, seed=0):
    """A PEFT LoRA adapter on ``model`` with random (non-zero) A and B, saved to tmp_path."""
    from peft import LoraConfig, get_peft_model

    model = model[0]  # tiny_random_model gives (model, tokenizer)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.05)
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    return out, peft_model


def _deltas(adapter_dir):
    """{module: s·BA} in float64, computed here independently of lora_pack."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    out = {}
    for key, a in weights.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            rank = a.shape[0]
            alpha = config["lora_alpha"]
            for pattern, value in (config.get("alpha_pattern") or {}).items():
                if module.endswith(pattern):
                    alpha = value
            out[module] = alpha / rank * weights[module + ".lora_B.weight"].double() @ a.double()
    return out


def test_full_budget_round_trip_is_exact_up_to_int8_rounding(tmp_path, tiny_llama):
    adapter, _ = _adapter(tmp_path, tiny_llama)
    packed = tmp_path / "packed.safetensors"
    record = pack_lora(adapter, packed, budget_bytes=10**9)
    assert record["format"] == FORMAT
    assert all(rank == 4 for rank in record["ranks"].values())  # rank-4 updates keep their 4 components
    out = unpack_lora(packed, tmp_path / "unpacked")
    before, after = _deltas(adapter), _deltas(out)
    assert before.keys() == after.keys()
    for module, delta in before.items():
        # each factor entry is off by at most half its row's scale (absmax / 127 / 2); the product's
        # error is bounded by summing |Δb||a| + |b||Δa| + |Δb||Δa| over the rank's components
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        b, a = (u[:, :4] * s[:4].sqrt()), (s[:4].sqrt()[:, None] * vh[:4])
        db = b.abs().amax(0) / 254  # per component (column of b)
        da = a.abs().amax(1) / 254
        bound = (db[None, :, None] * a.abs()[None] + b.abs()[:, :, None] * da[None, :, None]
                 + db[None, :, None] * da[None, :, None]).sum(1)
        assert ((after[module] - delta).abs() <= bound + 1e-12).all(), module
        assert record["relative_errors"][module] < 0.02


def test_budget_drops_the_weakest_components_and_is_respected(tmp_path, tiny_llama):
    adapter, _ = _adapter(tmp_path, tiny_llama, rank=4)
    before = _deltas(adapter)
    cost = {m: sum(d.shape) for m, d in before.items()}
    budget = sum(2 * c for c in cost.values()) + 3  # room for about two components a module
    packed = tmp_path / "packed.safetensors"
    record = pack_lora(adapter, packed, budget_bytes=budget)
    assert record["factor_bytes"] == sum(record["ranks"][m] * cost[m] for m in cost) <= budget
    assert min(record["ranks"].values()) >= 1 and sum(record["ranks"].values()) < 4 * len(cost)
    after = _deltas(unpack_lora(packed, tmp_path / "unpacked"))
    for module, delta in before.items():
        rank = record["ranks"][module]
        s = torch.linalg.svdvals(delta)
        # what is lost is the dropped singular values (Eckart-Young) plus int8 rounding
        truncation = float((s[rank:] ** 2).sum().sqrt() / delta.norm())
        measured = float((after[module] - delta).norm() / delta.norm())
        assert measured == pytest.approx(record["relative_errors"][module], abs=1e-6)
        assert abs(measured - truncation) < 0.02, (module, measured, truncation)
    with pytest.raises(ValueError, match="without a component"):
        pack_lora(adapter, tmp_path / "tiny.safetensors", budget_bytes=10)


def test_unpacked_adapter_merges_in_peft_like_the_packed_update(tmp_path, tiny_llama):
    """PEFT reads the per-module ranks (rank_pattern/alpha_pattern) and merges exactly s·BA."""
    from peft import PeftModel

    from clinic.modeling.models import tiny_random_model

    adapter, _ = _adapter(tmp_path, tiny_llama, rank=4)
    budget = sum(2 * sum(d.shape) for d in _deltas(adapter).values()) + 200
    pack_lora(adapter, tmp_path / "packed.safetensors", budget_bytes=budget)
    out = unpack_lora(tmp_path / "packed.safetensors", tmp_path / "unpacked")
    expected = _deltas(out)
    assert len(set(json.loads((out / "adapter_config.json").read_text())["rank_pattern"].values())) >= 1
    base, _ = tiny_random_model("llama")
    weights = {n: p.detach().clone().double() for n, p in base.named_parameters()}
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    for module, delta in expected.items():
        name = module.removeprefix("base_model.model.") + ".weight"
        got = dict(merged.named_parameters())[name].detach().double() - weights[name]
        assert torch.allclose(got, delta, atol=1e-6), name  # float32 merge of O(0.1) numbers


def test_unpack_refuses_a_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a packed clinic LoRA adapter"):
        unpack_lora(tmp_path / "other.safetensors", tmp_path / "out")
