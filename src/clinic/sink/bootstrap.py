"""How sure is a count of positive sink heads? A bootstrap over the samples.

The count of heads with positive sink divergence (mean sink attention on harmful samples minus on
harmless ones, :mod:`clinic.sink.divergence`) depends on which 100 + 100 samples were drawn. Its
95 % interval here is the percentile interval of the count over ``n_boot`` resamples: the harmful
and the harmless samples are each drawn again with replacement (two independent groups), the
divergence recomputed, the heads counted.

Two models analysed on the same samples (every sink stage of one experiment is) are compared
*paired*: each resample draws one set of sample indices and applies it to both models, so the
interval of the difference in counts reflects the models, not the samples both saw.

Inputs are the ``[N, L, H]`` per-sample values that :func:`clinic.stages.sink.run_sink_analysis`
saves as ``per_sample.safetensors`` (keys ``harmful`` and ``harmless``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ClinicError

PER_SAMPLE_FILE = "per_sample.safetensors"


def _counts(harmful: torch.Tensor, harmless: torch.Tensor, idx_m: torch.Tensor, idx_r: torch.Tensor) -> torch.Tensor:
    """Positive-head counts for a batch of resamples: ``idx_m`` [B, N_m], ``idx_r`` [B, N_r] -> [B]."""
    div = harmful[idx_m].mean(dim=1) - harmless[idx_r].mean(dim=1)  # [B, L, H]
    return (div > 0).flatten(1).sum(dim=1)


def _indices(n_boot: int, n_m: int, n_r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(n_m, (n_boot, n_m), generator=gen), torch.randint(n_r, (n_boot, n_r), generator=gen))


def _percentiles(values: torch.Tensor) -> list[float]:
    low, high = torch.quantile(values.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [low, high]


def _check(harmful: torch.Tensor, harmless: torch.Tensor) -> None:
    if harmful.dim() != 3 or harmless.dim() != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise ClinicError(f"per-sample sink values must be [N, L, H] with the same L, H; "
                          f"got {tuple(harmful.shape)} and {tuple(harmless.shape)}")


def positive_heads_interval(harmful: torch.Tensor, harmless: torch.Tensor, n_boot: int = 2000,
                            seed: int = 0, chunk: int = 100) -> list[float]:
    """95 % bootstrap percentile interval of the positive-head count (two independent groups)."""
    _check(harmful, harmless)
    idx_m, idx_r = _indices(n_boot, len(harmful), len(harmless), seed)
    counts = torch.cat([_counts(harmful, harmless, idx_m[i : i + chunk], idx_r[i : i + chunk])
                        for i in range(0, n_boot, chunk)])
    return _percentiles(counts)


def paired_count_difference(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
                            n_boot: int = 2000, seed: int = 0, chunk: int = 100) -> dict:
    """Count of ``b`` minus count of ``a`` (each ``(harmful, harmless)`` per-sample values of the same
    samples), with the paired bootstrap's 95 % interval and the share of resamples with b > a."""
    for values in (a, b):
        _check(*values)
    if a[0].shape != b[0].shape or a[1].shape != b[1].shape:
        raise ClinicError("paired comparison needs the same samples for both models: "
                          f"{tuple(a[0].shape)}/{tuple(a[1].shape)} vs {tuple(b[0].shape)}/{tuple(b[1].shape)}")
    idx_m, idx_r = _indices(n_boot, len(a[0]), len(a[1]), seed)
    diffs = []
    for i in range(0, n_boot, chunk):
        m, r = idx_m[i : i + chunk], idx_r[i : i + chunk]
        diffs.append(_counts(*b, m, r) - _counts(*a, m, r))
    diffs = torch.cat(diffs)
    whole = [torch.arange(len(a[0]))[None], torch.arange(len(a[1]))[None]]
    observed = int((_counts(*b, *whole) - _counts(*a, *whole)).item())
    return {"difference": observed, "ci95": _percentiles(diffs), "share_b_above_a": float((diffs > 0).double().mean()),
            "n_boot": n_boot}


def load_per_sample(sink_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(harmful, harmless)`` per-sample values saved by a sink analysis (safetensors, no pickle)."""
    from safetensors.torch import load_file

    path = Path(sink_dir) / PER_SAMPLE_FILE
    if not path.exists():
        raise ClinicError(f"{path} does not exist: the sink analysis predates per-sample values; run it again")
    tensors = load_file(str(path))
    return tensors["harmful"].float(), tensors["harmless"].float()


def save_per_sample(sink_dir: str | Path, harmful: torch.Tensor, harmless: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    path = Path(sink_dir) / PER_SAMPLE_FILE
    save_file({"harmful": harmful.contiguous(), "harmless": harmless.contiguous()}, str(path))
    return path
