"""Model-level parallel helpers: the model inside an engine wrapper, and the few collectives the
multi-pass methods need (the engines themselves, and which method runs under which, are declared
in :mod:`clinic.methods.engines`).

Every custom step calls the wrapped model's backward exactly once per micro-batch; intermediate
passes run on :func:`unwrap`'s model with ``torch.autograd.grad`` (no DDP all-reduce, no
DeepSpeed gradient hooks), and what must be global across processes is averaged with
:func:`average_`.
"""

from __future__ import annotations

import torch

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / DataParallel / DeepSpeed engine wrapper (a PEFT model stays).

    Hooks and structural lookups work on it, and a forward through it runs no DDP bookkeeping:
    an intermediate pass whose gradients are taken with ``torch.autograd.grad`` runs here."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=True)


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes, in place (a no-op in a single process)."""
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def average_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average tensors over processes, in place, with one all-reduce per dtype (a no-op in a
    single process). Every process must call it with tensors of the same shapes."""
    n = world_size()
    if n == 1 or not tensors:
        return tensors
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        all_reduce_sum_(flat).div_(n)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors
