"""Where a stage computes, and how much memory it took."""

from __future__ import annotations

import resource

import torch


def peak_memory_mb() -> float:
    """The process's peak memory: the GPU's allocator peak where there is one, else the CPU's
    resident set (KiB on Linux)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
