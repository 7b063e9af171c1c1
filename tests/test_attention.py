"""Exact sink attention (clinic.modeling.attention) against an independent eager reference.

Reference definition (what every test below compares with): load the same weights with
``attn_implementation="eager"``, run with ``output_attentions=True`` and, for layer l, head h and
sample b, average ``attentions[l][b, h, i, k]`` over the query positions i that are real
(attention_mask = 1) and come strictly after the sink k = first real token + sink_index.
Positions are ``cumsum(mask) − 1`` in both, so left and right padding describe the same tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from clinic.modeling.attention import (
    SINK_ATTENTION,
    attn_implementation,
    fixed_sink_positions,
    most_attended_positions,
    position_ids_for,
    sink_attention,
    sink_attention_values,
    use_sink_attention,
)
from clinic.modeling.models import tiny_random_model


ARCH_OVERRIDES = {
    "llama": {},
    "qwen2": {},
    "gemma": {},
    # a window shorter than the batch, so the sliding-window mask really matters
    "mistral": {"sliding_window": 7},
}


def _pair(arch: str, **overrides):
    """The same tiny weights twice: clinic's implementation and an eager reference."""
    kw = {**ARCH_OVERRIDES[arch], **overrides}
    model, tok = tiny_random_model(arch, seed=1, **kw)
    ref, _ = tiny_random_model(arch, seed=1, **kw)
    ref.set_attn_implementation("eager")
    model.eval()
    ref.eval()
    return model, ref, tok


def _batch(side: str, seed: int = 0, lengths=(13, 9, 5), width: int = 13):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 250, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, width - n :] = 1
    return ids, mask


def eager_reference(ref, ids, mask, sink_index: int = 0, positions=None) -> torch.Tensor:
    """[L, B, H] from full eager attention matrices (slow, T×T)."""
    out = ref(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), output_attentions=True,
              use_cache=False)
    layers = []
    for attn in out.attentions:  # [B, H, T, T]
        rows = []
        for b in range(ids.shape[0]):
            real = mask[b].nonzero().flatten()
            k = int(positions[b]) if positions is not None else int(real[0]) + sink_index
            queries = real[real > k]
            rows.append(attn[b, :, queries, k].mean(dim=-1))
        layers.append(torch.stack(rows))
    return torch.stack(layers)


@pytest.mark.parametrize("arch", list(ARCH_OVERRIDES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_sink_attention_matches_eager(arch, side):
    model, ref, _ = _pair(arch)
    ids, mask = _batch(side)
    with torch.no_grad():
        got = sink_attention_values(model, ids, mask)
        want = eager_reference(ref, ids, mask)
    assert got.shape == (model.config.num_hidden_layers, 3, model.config.num_attention_heads)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_sink_index_offset(arch):
    model, ref, _ = _pair(arch)
    ids, mask = _batch("left", seed=3)
    with torch.no_grad():
        got = sink_attention_values(model, ids, mask, sink_index=2)
        want = eager_reference(ref, ids, mask, sink_index=2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and the offset matters (so the test above can fail)
    assert (got - sink_attention_values(model, ids, mask, sink_index=0).detach()).abs().max() > 1e-3


def test_padding_side_and_batching_do_not_change_values():
    model, _, _ = _pair("qwen2")
    ids_r, mask_r = _batch("right", seed=5)
    ids_l = torch.zeros_like(ids_r)
    mask_l = mask_r.flip(1)
    for b in range(ids_r.shape[0]):  # the same tokens, left-padded
        n = int(mask_r[b].sum())
        ids_l[b, ids_r.shape[1] - n :] = ids_r[b, :n]
    with torch.no_grad():
        right = sink_attention_values(model, ids_r, mask_r)
        left = sink_attention_values(model, ids_l, mask_l)
        single = torch.cat(
            [sink_attention_values(model, ids_r[b : b + 1, : int(mask_r[b].sum())], mask_r[b : b + 1, : int(mask_r[b].sum())])
             for b in range(ids_r.shape[0])], dim=1)
    torch.testing.assert_close(right, left, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, single, atol=1e-5, rtol=0)


def test_sink_positions_follow_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert fixed_sink_positions(mask).tolist() == [2, 0]
    assert fixed_sink_positions(mask, 1).tolist() == [3, 1]
    with pytest.raises(ValueError):
        fixed_sink_positions(mask, 3)  # the first row has only 3 real tokens


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_gradient_matches_eager(arch):
    """d/dθ of the Surgery regulariser (and of a generic functional) equals the eager one."""
    model, ref, _ = _pair(arch)
    ids, mask = _batch("right", seed=7, lengths=(6, 13), width=13)  # harmful probe shorter → d > 0
    weights = torch.randn(model.config.num_hidden_layers, 2, model.config.num_attention_heads,
                          generator=torch.Generator().manual_seed(0))

    def objective(values):
        d = values[:, 0] - values[:, 1]
        assert (d > 0).any()
        return 300.0 * torch.relu(d).mean() + (values * weights).sum()

    objective(sink_attention_values(model, ids, mask)).backward()
    objective(eager_reference(ref, ids, mask)).backward()
    checked = 0
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if q.grad is None or not q.grad.abs().sum():
            continue
        assert p.grad is not None, name
        rel = (p.grad - q.grad).norm() / q.grad.norm()
        assert rel < 1e-4, (name, float(rel))
        checked += 1
    assert checked >= 8  # attention and MLP weights of every layer


@pytest.mark.parametrize("arch", list(ARCH_OVERRIDES))
def test_model_outputs_unchanged(arch):
    model, _, _ = _pair(arch)
    ids, mask = _batch("right", seed=11)
    plain, _ = tiny_random_model(arch, seed=1, **ARCH_OVERRIDES[arch])
    plain.set_attn_implementation("sdpa")
    plain.eval()
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=mask).logits
        use_sink_attention(model)
        assert attn_implementation(model) == SINK_ATTENTION
        idle = model(input_ids=ids, attention_mask=mask).logits  # no collector: plain sdpa
        with sink_attention(model, mask) as probe:
            active = model(input_ids=ids, attention_mask=mask).logits
        assert probe.values.shape[0] == model.config.num_hidden_layers
    assert torch.equal(idle, want)
    real = mask.bool()
    torch.testing.assert_close(active[real], want[real], atol=1e-5, rtol=1e-5)


def test_context_restores_implementation_and_nesting_is_per_model():
    model, _, _ = _pair("llama")
    other, _, _ = _pair("llama")
    model.set_attn_implementation("eager")
    ids, mask = _batch("right")
    with torch.no_grad(), sink_attention(model, mask) as probe:
        model(input_ids=ids, attention_mask=mask)
        other(input_ids=ids, attention_mask=mask)  # another model: not recorded, no error
    assert attn_implementation(model) == "eager"
    assert probe.values.shape == (2, 3, 4)


def test_missing_forward_is_an_error():
    model, _, _ = _pair("llama")
    _, mask = _batch("right")
    with sink_attention(model, mask) as probe:
        pass
    with pytest.raises(RuntimeError, match="no sink attention was recorded"):
        probe.values


def _saved_float_txt(fn, T: int) -> list[tuple]:
    """Shapes of floating tensors with two trailing T dims that autograd saves while ``fn`` runs."""
    seen = []

    def pack(t):
        if t.is_floating_point() and t.dim() >= 2 and t.shape[-1] == T and t.shape[-2] == T:
            seen.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def test_no_txt_matrix_is_kept_for_backward():
    """Nothing per head and T×T is saved; only what plain SDPA itself keeps (the [B, 1, T, T] mask)."""
    model, ref, _ = _pair("llama")
    T, H = 37, model.config.num_attention_heads
    ids, mask = _batch("right", lengths=(37, 30), width=T)
    ours = _saved_float_txt(lambda: sink_attention_values(model, ids, mask), T)
    plain = _saved_float_txt(lambda: model.model(input_ids=ids, attention_mask=mask), T)
    assert sorted(ours) == sorted(plain)
    assert all(s[-3] == 1 for s in ours if len(s) == 4)  # masks, not per-head probabilities
    # the check does catch T×T storage: the eager reference keeps [B, H, T, T] per layer
    assert (2, H, T, T) in _saved_float_txt(lambda: eager_reference(ref, ids, mask), T)
    # and so does a wider V without padded Q/K (SDPA's math kernel)
    assert _saved_float_txt(lambda: sink_attention_values(model, ids, mask, pad_qk=False), T) != plain


def test_softcapping_falls_back_exactly():
    """Gemma 2's logit soft-capping has no SDPA kernel: the eager fallback gives the same values."""
    config = AutoConfig.for_model(
        "gemma2", vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=6, attn_logit_softcapping=3.0, final_logit_softcapping=None,
        pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ref = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")  # own config
    ref.load_state_dict(model.state_dict())
    use_sink_attention(model)
    model.eval()
    ref.eval()
    ids, mask = _batch("right", seed=2)
    got = sink_attention_values(model, ids, mask)
    want = eager_reference(ref, ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got.sum().backward()
    want.sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        if q.grad is not None and q.grad.abs().sum() > 0:
            assert (p.grad - q.grad).norm() / q.grad.norm() < 1e-4
    # without padding transformers hands over no mask (causal): outputs must still match eager
    full = torch.ones_like(mask)
    with torch.no_grad():
        idle = model(input_ids=ids, attention_mask=full).logits
        torch.testing.assert_close(idle, ref(input_ids=ids, attention_mask=full).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sink_attention_values(model, ids, full), eager_reference(ref, ids, full),
                                   atol=1e-5, rtol=0)


def test_most_attended_positions_match_eager_column_sums():
    model, ref, _ = _pair("llama")
    ids, mask = _batch("left", seed=4)
    with torch.no_grad():
        got = most_attended_positions(model, ids, mask, chunk=4)  # several query chunks
        out = ref(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), output_attentions=True)
        totals = sum(a.sum(dim=1) for a in out.attentions)  # [B, T, T] summed over layers and heads
        totals = (totals * mask[:, :, None]).sum(dim=1)  # over real queries
        totals = totals.masked_fill(~mask.bool(), float("-inf"))
        assert torch.equal(got, totals.argmax(dim=1))
        values = sink_attention_values(model, ids, mask, mode="most_attended")
        torch.testing.assert_close(values, eager_reference(ref, ids, mask, positions=got), atol=1e-5, rtol=0)



def test_gemma3_sliding_and_global_layers():
    """Gemma 3 (the packaged gemma3-270m's architecture): per-layer sliding/full masks, one KV head."""
    config = AutoConfig.for_model(
        "gemma3_text", vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=5, pad_token_id=0,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ref = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")  # own config
    ref.load_state_dict(model.state_dict())
    model.eval()
    ref.eval()
    ids, mask = _batch("left", seed=8)
    with torch.no_grad():
        torch.testing.assert_close(sink_attention_values(model, ids, mask), eager_reference(ref, ids, mask),
                                   atol=1e-5, rtol=0)


def test_gradient_checkpointing_is_compatible():
    model, _, _ = _pair("llama")
    plain, _, _ = _pair("llama")
    model.train()
    plain.train()
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, mask = _batch("right", seed=9)
    for m in (model, plain):
        loss = m(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        (loss + sink_attention_values(m, ids, mask).sum()).backward()
    assert model.model.layers[0].gradient_checkpointing  # restored after the probe pass
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)
