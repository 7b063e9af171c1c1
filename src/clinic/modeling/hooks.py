"""Find decoder layers and attention modules structurally, for any architecture.

The reference code picks attention modules by class name (``LlamaAttention``...), which misses
new classes. Here the decoder stack is the ``nn.ModuleList`` whose length is the config's
``num_hidden_layers``, and a layer's attention module is its child that owns the output
projection (``o_proj``/``out_proj``/``dense``), ``self_attn`` by convention. This works through
PEFT wrappers and for llama, qwen2, gemma, mistral and their relatives.

Also here: the other structural finders (each layer's MLP, the final norm), hooks that capture
outputs or make the embeddings' output require grad, per-layer activation checkpointing
(:class:`LayerCheckpointer`, T-Vaccine's memory saving), and gradient bookkeeping for
multi-pass steps (:func:`take_grads` / :func:`put_back_grads`: a step that runs several
backward passes must not wipe what earlier micro-batches of a gradient-accumulation step left
in ``.grad``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from .parallel import unwrap

_OUT_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj")


def _num_layers(model) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None)


def _attention_child(layer: nn.Module) -> nn.Module | None:
    if hasattr(layer, "self_attn"):
        return layer.self_attn
    for name, child in layer.named_children():
        if "attn" in name.lower() or "attention" in name.lower():
            return child
    for child in layer.children():
        if any(hasattr(child, n) for n in _OUT_PROJ_NAMES):
            return child
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder layers of ``model`` (a causal LM, maybe PEFT-, DDP- or
    DeepSpeed-wrapped)."""
    model = unwrap(model)
    expected = _num_layers(model)
    if expected is None and hasattr(model, "get_base_model"):
        expected = _num_layers(model.get_base_model())
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and _attention_child(module[0]) is not None:
            candidates.append((name, module))
    if expected is not None:
        candidates = [(n, m) for n, m in candidates if len(m) == expected] or candidates
    if not candidates:
        raise ValueError(f"could not find the decoder layers of {type(model).__name__}")
    # the outermost list when several match (a vision tower's layers would be nested elsewhere)
    return min(candidates, key=lambda nm: nm[0].count("."))[1]


def pretrained_model(model):
    """The transformers model under a PEFT (and DDP / DeepSpeed) wrapper, or the model itself."""
    from .parallel import unwrap

    inner = unwrap(model)
    for _ in range(4):
        if hasattr(inner, "set_attn_implementation") and hasattr(inner, "config"):
            return inner
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "base_model"):
            inner = inner.base_model
        elif hasattr(inner, "model"):
            inner = inner.model
    return inner


def decoder_without_head(model):
    """The decoder without the LM head (probes need no logits); LoRA layers stay in place."""
    inner = pretrained_model(model)
    getter = getattr(inner, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    return decoder if decoder is not None else inner


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's attention module, in layer order."""
    mods = [_attention_child(layer) for layer in decoder_layers(model)]
    if any(m is None for m in mods):
        raise ValueError("a decoder layer has no attention module")
    return mods


def _first_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, tensor):
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    return tensor


@contextmanager
def forward_hooks(modules: dict[int, nn.Module], make_hook):
    """While active, ``modules[i]`` carries the forward hook ``make_hook(i)``; every hook is
    removed on exit, also when the body raises (one place for the register/remove pattern)."""
    handles = []
    try:
        for i, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def record_output_grads(modules: dict[int, nn.Module], store: dict[int, torch.Tensor]):
    """While active, ``store[i]`` receives d(loss)/d(output of modules[i]) on backward.

    The output is the attention module's result after its output projection and before the
    residual add: the "hidden embedding" the Vaccine family perturbs (docs/reference/algorithms.md §2.2).
    """

    def make_hook(i):
        def forward_hook(_module, _args, output):
            tensor = _first_tensor(output)
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: store.__setitem__(i, grad.detach().clone()))

        return forward_hook

    with forward_hooks(modules, make_hook):
        yield store


@contextmanager
def perturb_outputs(modules: dict[int, nn.Module], perturbations: dict[int, torch.Tensor]):
    """While active, ``modules[i]``'s output becomes ``output + perturbations[i]`` (a constant)."""

    def make_hook(i):
        def forward_hook(_module, _args, output):
            tensor = _first_tensor(output)
            return _replace_first(output, tensor + perturbations[i].to(tensor.dtype))

        return forward_hook

    with forward_hooks({i: m for i, m in modules.items() if i in perturbations}, make_hook):
        yield


# --------------------------------------------------------------------------------------------
# more structural finders

_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def _mlp_child(layer: nn.Module) -> nn.Module | None:
    for name in _MLP_NAMES:
        if hasattr(layer, name) and isinstance(getattr(layer, name), nn.Module):
            return getattr(layer, name)
    for name, child in layer.named_children():
        if any(n in name.lower() for n in _MLP_NAMES):
            return child
    return None


def mlp_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's MLP (feed-forward) module, in layer order."""
    mods = [_mlp_child(layer) for layer in decoder_layers(model)]
    if any(m is None for m in mods):
        raise ValueError("a decoder layer has no MLP module")
    return mods


_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "final_norm")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last hidden state before the LM head (``model.model.norm``)."""
    model = unwrap(model)
    layers = decoder_layers(model)
    for module in model.modules():
        if any(child is layers for child in module.children()):
            for name in _NORM_NAMES:
                norm = getattr(module, name, None)
                if isinstance(norm, nn.Module):
                    return norm
    raise ValueError(f"could not find the final norm of {type(model).__name__}")


# --------------------------------------------------------------------------------------------
# capturing


@contextmanager
def capture_outputs(modules: dict[int, nn.Module], store: dict[int, torch.Tensor]):
    """While active, ``store[i]`` holds the latest forward output (first tensor) of ``modules[i]``.

    The tensors stay in the autograd graph: losses built on them backpropagate into the model.
    """

    def make_hook(i):
        def forward_hook(_module, _args, output):
            store[i] = _first_tensor(output)

        return forward_hook

    with forward_hooks(modules, make_hook):
        yield store


@contextmanager
def inputs_require_grad(model: nn.Module):
    """While active, the input embeddings' output requires grad, so gradients w.r.t. every
    layer's activations exist even where no parameter upstream is trainable."""

    def hook(_module, _args, output):
        if torch.is_grad_enabled() and not output.requires_grad:
            output.requires_grad_(True)
        return output

    handle = unwrap(model).get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------
# per-layer activation checkpointing


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _needs_graph(layer: nn.Module, args, kwargs) -> bool:
    """Whether a layer's forward builds an autograd graph (else it saves nothing anyway, and a
    checkpoint would only keep its inputs for nothing)."""
    return any(t.requires_grad for t in _tensors((args, kwargs))) or any(p.requires_grad for p in layer.parameters())


class LayerCheckpointer:
    """Activation checkpointing switched on per decoder layer.

    Each layer's ``forward`` is wrapped (an instance attribute, so the class and other models
    are untouched). A layer whose index is in :attr:`checkpointed` runs under non-reentrant
    :func:`torch.utils.checkpoint.checkpoint` whenever gradients are enabled: its activations are
    not kept, only its inputs, and it is recomputed in backward, so gradients still flow *through*
    it to earlier layers (a ``no_grad`` layer would cut them). What a checkpointed layer keeps is
    its input hidden state ([B, T, D]); a layer through which no gradient flows (frozen, before
    every trainable layer) is not checkpointed at all, as it keeps nothing. Module hooks of the layer itself
    stay outside the checkpoint; hooks of its children (attention perturbations) run again in the
    recomputation, so they must stay registered until backward is done.
    """

    def __init__(self, model: nn.Module):
        self.layers = decoder_layers(model)
        self.checkpointed: set[int] = set()
        self._originals: dict[int, object] = {}
        for i, layer in enumerate(self.layers):
            self._originals[i] = layer.__dict__.get("forward")
            layer.forward = self._wrap(i, layer, layer.forward)

    def _wrap(self, index: int, layer: nn.Module, forward):
        from torch.utils.checkpoint import checkpoint

        @functools.wraps(forward)
        def wrapped(*args, **kwargs):
            if index in self.checkpointed and torch.is_grad_enabled() and layer.training and _needs_graph(layer, args, kwargs):
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        return wrapped

    def set(self, indices: Iterable[int]) -> None:
        self.checkpointed = set(indices)

    def remove(self) -> None:
        """Restore every layer's own ``forward``."""
        for i, layer in enumerate(self.layers):
            original = self._originals.get(i)
            if original is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = original
        self._originals.clear()
        self.checkpointed = set()


# --------------------------------------------------------------------------------------------
# gradient bookkeeping for multi-pass steps


def take_grads(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """Move every existing ``.grad`` of ``model`` out (they become ``None``) and return them."""
    stash = {}
    for p in model.parameters():
        if p.grad is not None:
            stash[p] = p.grad
            p.grad = None
    return stash


def put_back_grads(stash: dict[nn.Parameter, torch.Tensor]) -> None:
    """Add stashed gradients back onto ``.grad`` (the inverse of :func:`take_grads`)."""
    for p, g in stash.items():
        p.grad = g if p.grad is None else p.grad + g


@contextmanager
def displaced(params: list[torch.Tensor], direction: list[torch.Tensor], scale: float):
    """While active, every ``p <- p + scale * d``; the exact original weights come back on exit
    (also when the body raises). The simulated steps of Booster, TAR and the curation
    hypergradients: a gradient is taken at displaced weights, the real step starts from the
    original ones."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(d.to(p.device, p.dtype), alpha=scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def squared_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of squares of several tensors, accumulated in fp32 or wider: bf16/fp16 tensors are
    upcast to fp32, fp32 and fp64 ones keep their precision (a cast down would put fp32 rounding
    into an fp64 run)."""
    squares = [t.detach().to(torch.promote_types(t.dtype, torch.float32)).pow(2).sum() for t in tensors]
    if not squares:
        return torch.tensor(0.0)
    return torch.stack([s.to(squares[0].device) for s in squares]).sum()


def grad_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of several tensors (:func:`squared_norm`'s precision)."""
    return squared_norm(tensors).sqrt()
