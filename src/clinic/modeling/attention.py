"""Exact per-head *sink attention* without any T×T attention matrix.

For layer ``l``, query head ``h`` and one sequence ``X`` the sink attention is

    a_{l,h}(X) = mean over i in N_k of A^{l,h}_{i,k}(X)

where ``A`` is the softmax attention probability of query ``i`` on key ``j`` and ``k`` is the
*sink* key position. Conventions (docs/reference/algorithms.md §4.3; the choices the paper leaves open are ours):

- **sink position** ``k`` = the first real (non-pad) token + ``sink_index`` (default 0: the first
  token, e.g. ``<|begin_of_text|>``). With left padding the sink therefore stays on the same token.
  ``sink_positions=`` overrides it per sample (the "most attended position" mode computes them).
- **queries** ``N_k`` = the real tokens strictly after the sink (``i > k``). For ``k = 0`` this is
  the reference's rows ``1 … T−1``; queries before the sink cannot see it under causal masking.
  Padded positions never count. A sequence with no such query gets ``a = 0``.
- **heads** are query heads (GQA key/value heads are repeated to them), as in the reference.

How: the attention call is routed through :func:`sink_attention_forward`, registered with
transformers' ``AttentionInterface`` under :data:`SINK_ATTENTION`. Outside a collector it *is*
transformers' own ``sdpa_attention_forward`` (same call, same result). Inside
``with sink_attention(model, attention_mask) as probe:`` it appends to ``V`` one channel that is
1 at the sink key and 0 elsewhere, zero-padded to a multiple of 8. The matching output channel of
the one ``scaled_dot_product_attention`` call is exactly ``A[:, h, :, k]`` — masks, causality,
sliding windows, scaling and GQA handled by the very same kernel call — and autograd through SDPA
gives its exact gradient. The per-head mean over the valid queries (``[B, H]``) is kept per
layer; ``probe.values`` stacks them to ``[L, B, H]``.

``Q`` and ``K`` are zero-padded to the same width (``pad_qk``, on by default): the scores are
unchanged (the added channels are zero, the scale stays ``1/sqrt(d)``), and with equal head
dimensions SDPA keeps its fused flash kernel. Measured on CPU: with a wider ``V`` only, SDPA falls
back to its math kernel, which saves a ``[B·H, T, T]`` probability tensor per layer for backward;
with equal widths nothing T×T is saved (tests/test_attention.py checks this). Extra cost per
attention call: 8 more channels in Q, K and V, and a ``[B, T, H]`` column.

Logit soft-capping (Gemma 2) cannot run in SDPA: those layers fall back to an eager computation of
the same quantity, wrapped in activation checkpointing so that no T×T tensor outlives the layer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .hooks import attention_modules, decoder_layers, decoder_without_head, pretrained_model

SINK_ATTENTION = "clinic_sink"
SINK_MODES = ("fixed", "most_attended")

_state = threading.local()


def _active() -> _SinkCollector | None:
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


# --------------------------------------------------------------------------------------------
# the collector


class _SinkCollector:
    """Per forward pass: where the sink is, which queries count, and what was measured."""

    def __init__(self, model, attention_mask: torch.Tensor, sink_positions: torch.Tensor, *, pad_to: int | None,
                 pad_qk: bool, column_sums: bool = False, chunk: int = 256):
        modules = attention_modules(model)
        self.layer_of = {id(m): i for i, m in enumerate(modules)}
        self.n_layers = len(modules)
        mask = attention_mask.bool()
        self.real = mask  # [B, T]
        self.sink_positions = sink_positions.to(mask.device).long()  # [B]
        positions = torch.arange(mask.shape[1], device=mask.device)
        self.valid = mask & (positions[None, :] > self.sink_positions[:, None])  # queries that count
        count = self.valid.sum(1).clamp(min=1)
        self.weights = self.valid.float() / count[:, None].float()  # [B, T]
        self.pad_to = pad_to
        self.pad_qk = pad_qk
        self.column_sums = column_sums
        self.chunk = chunk
        self.per_layer: dict[int, torch.Tensor] = {}
        self.colsum: torch.Tensor | None = None  # [B, T] total attention received (column_sums mode)

    def onehot(self, length: int, dtype, device) -> torch.Tensor:
        hot = torch.zeros(self.sink_positions.shape[0], 1, length, 1, dtype=dtype, device=device)
        hot[torch.arange(hot.shape[0], device=device), 0, self.sink_positions.to(device), 0] = 1
        return hot

    def record(self, layer: int, column: torch.Tensor) -> None:
        """``column``: [B, T, H] attention of every query on the sink."""
        device = column.device  # layers may sit on different devices (device_map="auto")
        col = torch.where(self.valid.to(device)[:, :, None], column.float(), torch.zeros((), device=device))
        value = torch.einsum("bth,bt->bh", col, self.weights.to(device))
        self.per_layer[layer] = value.to(self.real.device)

    def stacked(self) -> torch.Tensor:
        missing = [i for i in range(self.n_layers) if i not in self.per_layer]
        if missing:
            raise RuntimeError(
                f"no sink attention was recorded for layers {missing}: run the model's forward inside the "
                f"context, with the {SINK_ATTENTION!r} attention implementation (use_sink_attention)"
            )
        return torch.stack([self.per_layer[i] for i in range(self.n_layers)])


# --------------------------------------------------------------------------------------------
# the attention function


def _eager_scores(module, query, key, attention_mask, scaling, softcap):
    groups = getattr(module, "num_key_value_groups", 1)
    key = repeat_kv(key, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    return scores, key


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None, q_start: int) -> torch.Tensor:
    q_len, kv_len = scores.shape[-2], scores.shape[-1]
    if mask is None:  # SDPA's is_causal: query i sees keys j <= i
        i = torch.arange(q_start, q_start + q_len, device=scores.device)[:, None]
        j = torch.arange(kv_len, device=scores.device)[None, :]
        return scores.masked_fill(j > i, float("-inf"))
    mask = mask[..., q_start : q_start + q_len, :kv_len]
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


def _softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.nan_to_num(probs, nan=0.0)  # fully masked rows (left padding) attend nowhere


def _eager_forward(module, query, key, value, attention_mask, scaling, softcap, sink_onehot, dropout=0.0):
    """Softcapped attention (no SDPA kernel for it): output and the sink column, eagerly."""
    scores, _ = _eager_scores(module, query, key, attention_mask, scaling, softcap)
    probs = _softmax_rows(_apply_mask(scores, attention_mask, 0)).to(query.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, repeat_kv(value, getattr(module, "num_key_value_groups", 1)))
    if sink_onehot is None:
        return out.transpose(1, 2).contiguous(), None
    column = torch.matmul(probs, sink_onehot.to(probs.dtype))  # [B, H, T, 1]
    return out.transpose(1, 2).contiguous(), column[..., 0].transpose(1, 2)


def _column_sums(collector: _SinkCollector, module, query, key, attention_mask, scaling, softcap) -> None:
    """Add, per key position, the attention it receives from every real query of every head."""
    with torch.no_grad():
        groups = getattr(module, "num_key_value_groups", 1)
        key = repeat_kv(key, groups)
        real_q = collector.real.to(query.device)
        total = torch.zeros(query.shape[0], key.shape[2], device=query.device, dtype=torch.float32)
        for start in range(0, query.shape[2], collector.chunk):
            q = query[:, :, start : start + collector.chunk]
            scores = torch.matmul(q, key.transpose(2, 3)).float() * scaling
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            probs = _softmax_rows(_apply_mask(scores, attention_mask, start))
            probs = probs * real_q[:, None, start : start + q.shape[2], None]
            total += probs.sum(dim=(1, 2))
        collector.colsum = total if collector.colsum is None else collector.colsum + total


def sink_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
    """transformers' ``sdpa`` attention, plus the exact sink column when a collector is active."""
    collector = _active()
    layer = None if collector is None else collector.layer_of.get(id(module))
    softcap = kwargs.get("softcap")
    if layer is None:
        if softcap is not None:  # sdpa cannot softcap: compute it eagerly (the mask may be None = causal)
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            out, _ = _eager_forward(module, query, key, value, attention_mask, scale, softcap, None, dropout)
            return out, None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)

    head_dim, v_dim = query.shape[-1], value.shape[-1]
    if scaling is None:
        scaling = head_dim**-0.5
    if collector.column_sums:
        _column_sums(collector, module, query, key, attention_mask, scaling, softcap)
        kwargs.pop("softcap", None)
        if softcap is not None:
            out, _ = _eager_forward(module, query, key, value, attention_mask, scaling, softcap,
                                    collector.onehot(key.shape[2], value.dtype, value.device))
            return out, None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                      is_causal=is_causal, **kwargs)

    if query.shape[2] != collector.real.shape[1] or key.shape[2] != collector.real.shape[1]:
        raise RuntimeError("sink attention needs a full forward pass without a KV cache (use_cache=False)")
    hot = collector.onehot(key.shape[2], value.dtype, value.device)
    if softcap is not None:
        kwargs.pop("softcap")
        out, column = checkpoint(_eager_forward, module, query, key, value, attention_mask, scaling, softcap, hot,
                                 use_reentrant=False)
        collector.record(layer, column)
        return out, None

    width = v_dim + 1
    if collector.pad_to:
        width = -(-width // collector.pad_to) * collector.pad_to
    b, h_kv, t, _ = value.shape
    parts = [value, hot.expand(b, h_kv, t, 1)]
    if width > v_dim + 1:
        parts.append(value.new_zeros(b, h_kv, t, width - v_dim - 1))
    value_aug = torch.cat(parts, dim=-1)
    if collector.pad_qk and head_dim == v_dim:
        query = F.pad(query, (0, width - head_dim))
        key = F.pad(key, (0, width - head_dim))
    out, _ = sdpa_attention_forward(module, query, key, value_aug, attention_mask, dropout=0.0, scaling=scaling,
                                    is_causal=is_causal, **kwargs)
    # out: [B, T, H, width]
    collector.record(layer, out[..., v_dim])
    return out[..., :v_dim], None


_registered = False


def register_sink_attention() -> str:
    """Register :data:`SINK_ATTENTION` with transformers (attention and mask); idempotent."""
    global _registered
    if not _registered:
        AttentionInterface.register(SINK_ATTENTION, sink_attention_forward)
        AttentionMaskInterface.register(SINK_ATTENTION, sdpa_mask)
        _registered = True
    return SINK_ATTENTION


def attn_implementation(model) -> str:
    return pretrained_model(model).config._attn_implementation


def use_sink_attention(model) -> str:
    """Switch ``model`` (maybe PEFT-wrapped) to :data:`SINK_ATTENTION`; returns the previous name.

    Outside a collector the implementation is plain SDPA, so the model can keep it for training.
    """
    register_sink_attention()
    inner = pretrained_model(model)
    previous = inner.config._attn_implementation
    if previous != SINK_ATTENTION:
        inner.set_attn_implementation(SINK_ATTENTION)
    return previous


# --------------------------------------------------------------------------------------------
# public API


class SinkProbe:
    """What ``sink_attention`` yields: ``values`` is ``[L, B, H]`` (differentiable)."""

    def __init__(self, collector: _SinkCollector):
        self._collector = collector

    @property
    def values(self) -> torch.Tensor:
        return self._collector.stacked()

    @property
    def sink_positions(self) -> torch.Tensor:
        return self._collector.sink_positions


def fixed_sink_positions(attention_mask: torch.Tensor, sink_index: int = 0) -> torch.Tensor:
    """First real token of each row + ``sink_index`` (works for left and right padding)."""
    mask = attention_mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("a sequence in the batch has no real token")
    first = mask.int().argmax(dim=1)
    positions = first + int(sink_index)
    lengths = mask.sum(1)
    if sink_index < 0 or (positions >= first + lengths).any():
        raise ValueError(f"sink index {sink_index} is outside a sequence of the batch (shortest has "
                         f"{int(lengths.min())} tokens)")
    return positions


@contextmanager
def _no_layer_checkpointing(model):
    """Gradient checkpointing would replay the layers outside the collector: keep it off inside."""
    layers = [m for m in decoder_layers(model) if getattr(m, "gradient_checkpointing", False)]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


@contextmanager
def _collecting(model, collector: _SinkCollector) -> Iterator[_SinkCollector]:
    previous = use_sink_attention(model)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(collector)
    try:
        with _no_layer_checkpointing(model):
            yield collector
    finally:
        stack.remove(collector)
        if previous != SINK_ATTENTION:
            pretrained_model(model).set_attn_implementation(previous)


@contextmanager
def sink_attention(model, attention_mask: torch.Tensor, sink_index: int = 0, sink_positions: torch.Tensor | None = None,
                   pad_to: int | None = None, pad_qk: bool | None = None) -> Iterator[SinkProbe]:
    """Collect exact per-head sink attention of the forward passes of ``model`` run inside.

    ``attention_mask`` is the ``[B, T]`` padding mask of the batch the forward pass gets.
    ``sink_positions`` (``[B]``) overrides ``first real token + sink_index``. The model is
    switched to :data:`SINK_ATTENTION` for the duration (and switched back).

    ``pad_to`` (default 8; 0 for none) rounds the augmented width up; ``pad_qk`` (default on)
    zero-pads Q and K to that width too, so that Q, K and V share a head dimension and the flash
    kernels stay eligible (CPU and CUDA): without it SDPA falls back to its math kernel, which
    keeps the T×T probabilities for backward.
    """
    if sink_positions is None:
        sink_positions = fixed_sink_positions(attention_mask, sink_index)
    pad_to = 8 if pad_to is None else pad_to
    pad_qk = True if pad_qk is None else pad_qk
    collector = _SinkCollector(model, attention_mask, sink_positions, pad_to=pad_to, pad_qk=pad_qk)
    with _collecting(model, collector):
        yield SinkProbe(collector)


def most_attended_positions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 256,
                            **forward_kwargs) -> torch.Tensor:
    """Per sample, the real position that receives the most attention, summed over all layers,
    heads and real query positions (the paper's sink definition). A no-grad pass, computed in query
    chunks of ``chunk`` rows: at most ``B·H·chunk·T`` scores exist at a time."""
    dummy = torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)
    collector = _SinkCollector(model, attention_mask, dummy, pad_to=None, pad_qk=False, column_sums=True, chunk=chunk)
    with torch.no_grad(), _collecting(model, collector):
        _forward(model, input_ids, attention_mask, **forward_kwargs)
    totals = collector.colsum.masked_fill(~attention_mask.bool().to(collector.colsum.device), float("-inf"))
    return totals.argmax(dim=1)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, … over the real tokens of each row, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def _forward(model, input_ids, attention_mask, skip_head: bool = True, **kwargs):
    kwargs.setdefault("position_ids", position_ids_for(attention_mask))
    target = decoder_without_head(model) if skip_head else model
    return target(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)


def sink_attention_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, sink_index: int = 0,
                          mode: str = "fixed", skip_head: bool = True, **kwargs) -> torch.Tensor:
    """``[L, B, H]`` sink attention of a batch, differentiable when grad is enabled.

    ``mode="fixed"``: the sink is the first real token + ``sink_index``; ``"most_attended"``: a
    no-grad pass first finds each sample's most attended position (``sink_index`` is ignored).
    Positions are counted over real tokens (``position_ids_for``), so padding side does not
    matter; ``skip_head`` runs the decoder only (the LM head's logits are not needed).
    """
    if mode not in SINK_MODES:
        raise ValueError(f"unknown sink mode {mode!r}; choose one of {', '.join(SINK_MODES)}")
    positions = None
    if mode == "most_attended":
        positions = most_attended_positions(model, input_ids, attention_mask)
    with sink_attention(model, attention_mask, sink_index, sink_positions=positions, **kwargs) as probe:
        _forward(model, input_ids, attention_mask, skip_head=skip_head)
    return probe.values
