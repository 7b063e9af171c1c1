"""Find decoder layers and attention modules structurally, for any architecture.

The reference code picks attention modules by class name (``LlamaAttention``...), which misses
new classes. Here the decoder stack is the ``nn.ModuleList`` whose length is the config's
``num_hidden_layers``, and a layer's attention module is its child that owns the output
projection (``o_proj``/``out_proj``/``dense``), ``self_attn`` by convention. This works through
PEFT wrappers and for llama, qwen2, gemma, mistral and their relatives.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

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
    """The stack of decoder layers of ``model`` (a causal LM, maybe PEFT-wrapped)."""
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
def record_output_grads(modules: dict[int, nn.Module], store: dict[int, torch.Tensor]):
    """While active, ``store[i]`` receives d(loss)/d(output of modules[i]) on backward.

    The output is the attention module's result after its output projection and before the
    residual add: the "hidden embedding" the Vaccine family perturbs (ALGORITHMS.md §2.2).
    """
    handles = []

    def make_hook(i):
        def forward_hook(_module, _args, output):
            tensor = _first_tensor(output)
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: store.__setitem__(i, grad.detach().clone()))

        return forward_hook

    try:
        for i, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(i)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def perturb_outputs(modules: dict[int, nn.Module], perturbations: dict[int, torch.Tensor]):
    """While active, ``modules[i]``'s output becomes ``output + perturbations[i]`` (a constant)."""
    handles = []

    def make_hook(i):
        def forward_hook(_module, _args, output):
            tensor = _first_tensor(output)
            return _replace_first(output, tensor + perturbations[i].to(tensor.dtype))

        return forward_hook

    try:
        for i, module in modules.items():
            if i in perturbations:
                handles.append(module.register_forward_hook(make_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()
