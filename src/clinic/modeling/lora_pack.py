"""A LoRA adapter packed into a byte budget, and unpacked back into an ordinary PEFT adapter.

Why: clinic ships the calibrated protocol's SmolLM2 alignment so that ``clinic demo`` needs no
25-minute alignment on a fresh clone, and a file tracked in the repository stays ≤ 2 MiB. The
float16 adapter (rank 8 on every linear layer) is 4.7 MiB.

Packing, per adapted module with update ΔW = s · B A (s = lora_alpha / r):

1. SVD of ΔW = U Σ Vᵀ; component i is the rank-one term σᵢ uᵢ vᵢᵀ, stored as the pair
   (√σᵢ uᵢ, √σᵢ vᵢ), costing ``in + out`` bytes at int8.
2. Components are chosen greedily across all modules by the share of their module's ‖ΔW‖²_F they
   carry per byte, in each module's singular-value order, until the budget is spent: a module
   whose update is nearly low-rank keeps fewer components than one that needs them all.
3. Each kept factor vector is quantised to int8 with its own absmax scale (float32), so an entry's
   rounding error is at most half its vector's scale.

The packed file is a safetensors file (int8 factors, float32 scales; the source adapter's config
in its metadata). :func:`unpack_lora` writes a PEFT adapter directory with per-module ranks
(``rank_pattern``, with ``alpha_pattern`` equal to it so every scaling is 1: s is folded into
the factors), which PEFT loads and merges like any other. The packing is lossy: the relative
Frobenius error of every module is recorded, and what the packed model does is measured, not
assumed (docs/protocol.md).
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

FORMAT = "clinic-lora-svd-int8/1"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_A, _B = ".lora_A.weight", ".lora_B.weight"


def _updates(adapter_dir: Path) -> tuple[dict, dict, dict]:
    """``{module: ΔW}`` (float64) of a PEFT LoRA adapter directory, ``{module: its LoRA rank}``,
    and its config."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("modules_to_save"):
        raise ValueError(f"{adapter_dir}: only plain LoRA adapters (no DoRA, no modules_to_save) can be packed")
    weights = load_file(adapter_dir / ADAPTER_WEIGHTS)
    updates, ranks = {}, {}
    for name in sorted(k for k in weights if k.endswith(_A)):
        module = name[: -len(_A)]
        rank = weights[name].shape[0]
        scaling = _scaling(config, module, rank)
        updates[module] = scaling * weights[module + _B].double() @ weights[name].double()
        ranks[module] = rank
    extra = set(weights) - {m + _A for m in updates} - {m + _B for m in updates}
    if extra:
        raise ValueError(f"{adapter_dir}: tensors other than LoRA factors cannot be packed: {sorted(extra)[:3]}")
    return updates, ranks, config


def _scaling(config: dict, module: str, rank: int) -> float:
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = value
    if config.get("use_rslora"):
        return alpha / rank ** 0.5
    return alpha / rank


def choose_components(energies: dict[str, list[float]], costs: dict[str, int], budget: int) -> dict[str, int]:
    """Ranks per module: components taken greedily by relative energy per byte (each module's
    components in order, so a module's kept part is always its leading singular triples) while
    they fit in ``budget`` bytes. ``energies[m]``: σᵢ² / ‖ΔW_m‖² in decreasing order."""
    ranks = {m: 0 for m in energies}
    heap = [(-e[0] / costs[m], m) for m, e in energies.items() if e]
    heapq.heapify(heap)
    used = 0
    while heap:
        _, module = heapq.heappop(heap)
        if used + costs[module] > budget:
            continue  # a module whose next component does not fit is done; cheaper ones may still fit
        used += costs[module]
        ranks[module] += 1
        if ranks[module] < len(energies[module]):
            heapq.heappush(heap, (-energies[module][ranks[module]] / costs[module], module))
    return ranks


def pack_lora(adapter_dir: str | Path, output: str | Path, budget_bytes: int) -> dict:
    """Pack the adapter in ``adapter_dir`` into the safetensors file ``output`` using at most
    ``budget_bytes`` bytes of int8 factors (scales and header come on top: 8 bytes a component
    plus the names). Returns the record: ranks, relative errors, bytes."""
    import torch
    from safetensors.torch import save_file

    updates, source_ranks, config = _updates(Path(adapter_dir))
    svd, energies, costs = {}, {}, {}
    for module, delta in updates.items():
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        # ΔW has rank ≤ r: the SVD's further singular values are rounding noise, never kept
        keep = min(source_ranks[module], int((s > 0).sum()))
        total = float((s ** 2).sum()) or 1.0
        svd[module] = (u[:, :keep], s[:keep], vh[:keep])
        energies[module] = [float(x ** 2) / total for x in s[:keep]]
        costs[module] = delta.shape[0] + delta.shape[1]
    ranks = choose_components(energies, costs, budget_bytes)
    empty = [m for m, r in ranks.items() if r == 0]
    if empty:  # PEFT cannot load a rank-0 layer, and dropping a module silently would change the model
        raise ValueError(f"a budget of {budget_bytes} bytes leaves {len(empty)} modules without a component "
                         f"(one each needs {sum(costs.values())} bytes)")
    tensors, errors = {}, {}
    for module, rank in ranks.items():
        u, s, vh = svd[module]
        b = (u[:, :rank] * s[:rank].sqrt()).T  # (rank, out): one row per component
        a = s[:rank].sqrt()[:, None] * vh[:rank]  # (rank, in)
        for part, factor in (("B", b), ("A", a)):
            q, scale = _quantise(factor)
            tensors[f"{module}.{part}.q"] = q
            tensors[f"{module}.{part}.scale"] = scale
        b_stored, a_stored = _factors(tensors, module)
        rebuilt = b_stored @ a_stored
        norm = float(updates[module].norm())
        errors[module] = float((rebuilt - updates[module]).norm()) / norm if norm else 0.0
    base_config = {k: v for k, v in config.items() if k not in ("r", "lora_alpha", "rank_pattern", "alpha_pattern")}
    save_file(tensors, str(output), metadata={"format": FORMAT, "adapter_config": json.dumps(base_config)})
    return {"format": FORMAT, "budget_bytes": budget_bytes,
            "factor_bytes": sum(ranks[m] * costs[m] for m in ranks), "file_bytes": Path(output).stat().st_size,
            "source_rank": config.get("r"), "ranks": ranks,
            "relative_error_mean": sum(errors.values()) / len(errors), "relative_error_max": max(errors.values()),
            "relative_errors": errors}


def _quantise(factor):
    """int8 rows with one absmax scale per row (a zero row keeps scale 0)."""
    import torch

    scale = factor.abs().amax(dim=1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(factor / safe[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.float().contiguous()


def _dequantise(q, scale):
    return q.double() * scale.double()[:, None]


def _factors(tensors: dict, module: str):
    """The stored (B, A) of ``module`` back in float64: B (out, rank), A (rank, in)."""
    b = _dequantise(tensors[f"{module}.B.q"], tensors[f"{module}.B.scale"]).T
    a = _dequantise(tensors[f"{module}.A.q"], tensors[f"{module}.A.scale"])
    return b, a


def unpack_lora(packed: str | Path, output_dir: str | Path) -> Path:
    """Write the PEFT adapter directory (``adapter_config.json`` with per-module ranks,
    ``adapter_model.safetensors`` in float32) that :func:`pack_lora`'s file stands for."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(packed), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{packed} is not a packed clinic LoRA adapter (format {metadata.get('format')!r})")
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    config = json.loads(metadata["adapter_config"])
    weights, ranks = {}, {}
    for key in sorted(k for k in tensors if k.endswith(".A.q")):
        module = key[: -len(".A.q")]
        b, a = _factors(tensors, module)
        ranks[module] = a.shape[0]
        weights[module + _A] = a.float().contiguous()
        weights[module + _B] = b.float().contiguous()
    if not ranks:
        raise ValueError(f"{packed} holds no LoRA module")
    top = max(ranks.values())
    # PEFT matches pattern keys as suffixes of module names ("model.layers.0.mlp.down_proj")
    pattern = {m.removeprefix("base_model.model."): r for m, r in ranks.items() if r != top}
    config.update(r=top, lora_alpha=top, rank_pattern=pattern, alpha_pattern=dict(pattern))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
