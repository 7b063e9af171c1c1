"""clinic's SDPA sink attention against eager ``output_attentions`` on the device it runs on.

tests/test_attention.py checks exactness on CPU in fp32. On a GPU, SDPA dispatches to other
kernels (flash / memory-efficient, bf16), so this check repeats the essentials there, on a
random-init model of SmolLM2-135M's shape (30 layers, 9 query / 3 key-value heads: GQA) with a
ragged batch, right and left padded:

- ``values``: per layer, sequence and head, the sink attention from ``sink_attention_values``
  against the column of eager attention probabilities averaged over the queries after the sink
  (an independent vectorised reference; positions ``cumsum(mask) - 1`` in both). fp32: max
  absolute difference <= 1e-4. bf16: clinic's bf16 error against the fp32 eager reference must be
  no worse than eager bf16's own error against it (x 2, or 2e-3, whichever is larger);
- ``gradient`` (fp32): the gradient of a Surgery-like objective (300 · mean ReLU(d) + a random
  linear functional of the values) through both; largest relative difference over parameters
  <= 1e-3;
- ``fused``: the bf16 sink pass, forward and backward, runs with SDPA restricted to its fused
  kernels (flash, memory-efficient), i.e. no fall-back to the math kernel; padded (mask) and
  unpadded (causal only) batches, clinic's padded Q/K and the V-only layout (recorded, not
  required);
- ``saved_txt``: float tensors with two trailing T×T dimensions that autograd saves for backward:
  the sink pass may save only what the plain SDPA pass saves (its ``[B, 1, T, T]`` mask);
- ``cost`` (bf16): forward + backward time (median of 5) and peak memory of the plain decoder pass
  and of the sink pass.

Run::

    python benchmarks/gpu_sink_check.py --out sink_check.json            # CUDA if available
    python benchmarks/gpu_sink_check.py --device cpu --shape tiny --out /tmp/sink_check.json

Exit status 1 when a required check fails.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import machine_info, save_json  # noqa: E402

from clinic.modeling.attention import sink_attention_values  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, head_dim=64),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, head_dim=16),
}
LENGTHS = {"smollm2-135m": (256, 200, 120, 64), "tiny": (32, 25, 9)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_batch(lengths, side: str, vocab: int, device: str):
    width = max(lengths)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    if side == "left":
        mask = mask.flip(1)
    return ids.to(device), mask.to(device)


def eager_sink(ref, ids, mask) -> torch.Tensor:
    """[L, B, H] from eager attention probabilities: sink = first real token, queries after it."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = ref(input_ids=ids, attention_mask=mask, position_ids=positions, output_attentions=True, use_cache=False)
    B, T = ids.shape
    sink = mask.argmax(1)  # index of the first 1
    queries = (mask.bool() & (torch.arange(T, device=ids.device)[None] > sink[:, None])).float()  # [B, T]
    layers = []
    for attn in out.attentions:  # [B, H, T, T]
        column = attn.gather(-1, sink.view(B, 1, 1, 1).expand(B, attn.shape[1], T, 1)).squeeze(-1).float()
        layers.append((column * queries[:, None]).sum(-1) / queries.sum(-1)[:, None])
    return torch.stack(layers)


def build(shape: str, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", **SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return model, ref


def check_values(model, ref, batches) -> dict:
    out = {}
    with torch.no_grad():
        for side, (ids, mask) in batches.items():
            want = eager_sink(ref, ids, mask)
            got32 = sink_attention_values(model, ids, mask).float()
            model16, ref16 = copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(ref).to(torch.bfloat16)
            got16 = sink_attention_values(model16, ids, mask).float()
            eager16 = eager_sink(ref16, ids, mask)
            err32 = float((got32 - want).abs().max())
            err16, eager_err16 = float((got16 - want).abs().max()), float((eager16 - want).abs().max())
            out[side] = {"fp32_max_abs_diff": err32, "bf16_max_abs_diff_vs_fp32_eager": err16,
                         "eager_bf16_max_abs_diff_vs_fp32_eager": eager_err16,
                         "ok": err32 <= 1e-4 and err16 <= max(2 * eager_err16, 2e-3)}
            del model16, ref16
    return out


def check_gradient(model, ref, ids, mask) -> dict:
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    weights = torch.randn(L, ids.shape[0], H, generator=torch.Generator().manual_seed(1)).to(ids.device)

    def objective(values):
        d = values[:, 0] - values[:, -1]
        return 300.0 * torch.relu(d).mean() + (values * weights).sum()

    model.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    objective(sink_attention_values(model, ids, mask)).backward()
    objective(eager_sink(ref, ids, mask)).backward()
    worst, compared = 0.0, 0
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if q.grad is None or not q.grad.abs().sum():
            continue
        if p.grad is None:
            return {"ok": False, "missing_gradient": name}
        worst = max(worst, float((p.grad - q.grad).norm() / q.grad.norm()))
        compared += 1
    model.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    return {"max_relative_diff": worst, "parameters_compared": compared, "ok": compared > 0 and worst <= 1e-3}


def _fused_only(fn) -> str:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            fn()
        return "ok"
    except RuntimeError as exc:
        return f"no fused kernel: {(str(exc).splitlines() or [''])[0][:200]}"


def check_fused(model16, padded, unpadded) -> dict:
    out = {}
    for name, (ids, mask) in {"padded": padded, "unpadded": unpadded}.items():
        for layout, kw in {"clinic": {}, "v_only": {"pad_qk": False}}.items():
            out[f"{name}_{layout}"] = _fused_only(lambda: sink_attention_values(model16, ids, mask, **kw).float().sum().backward())
            model16.zero_grad(set_to_none=True)
    out["ok"] = out["padded_clinic"] == "ok" and out["unpadded_clinic"] == "ok"
    return out


def _saved_txt(fn, T: int) -> list:
    seen = []

    def pack(t):
        if t.is_floating_point() and t.dim() >= 2 and t.shape[-1] == T and t.shape[-2] == T:
            seen.append(list(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sorted(seen)


def check_saved(model16, ids, mask) -> dict:
    T = ids.shape[1]
    plain = _saved_txt(lambda: model16.model(input_ids=ids, attention_mask=mask), T)
    ours = _saved_txt(lambda: sink_attention_values(model16, ids, mask), T)
    v_only = _saved_txt(lambda: sink_attention_values(model16, ids, mask, pad_qk=False), T)
    return {"plain_sdpa": plain, "clinic": ours, "v_only": v_only, "ok": ours == plain}


def measure_cost(model16, ids, mask, device: str) -> dict:
    def plain():
        model16.model(input_ids=ids, attention_mask=mask).last_hidden_state.float().pow(2).mean().backward()

    def sink():
        sink_attention_values(model16, ids, mask).float().sum().backward()

    out = {}
    for name, fn in {"plain_sdpa": plain, "sink": sink}.items():
        fn()  # warm-up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
            model16.zero_grad(set_to_none=True)
        out[name] = {"fwd_bwd_ms": round(1000 * statistics.median(times), 2)}
        if device == "cuda":
            out[name]["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["time_ratio"] = round(out["sink"]["fwd_bwd_ms"] / out["plain_sdpa"]["fwd_bwd_ms"], 3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--shape", choices=list(SHAPES), default="smollm2-135m")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons in fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False

    model, ref = build(args.shape, device)
    vocab = model.config.vocab_size
    batches = {side: make_batch(LENGTHS[args.shape], side, vocab, device) for side in ("right", "left")}
    full = LENGTHS[args.shape][0]
    unpadded = make_batch((full,) * 2, "right", vocab, device)
    report = {"info": machine_info(device), "shape": {"name": args.shape, **SHAPES[args.shape]},
              "lengths": LENGTHS[args.shape], "command": "python benchmarks/gpu_sink_check.py " + " ".join(sys.argv[1:]),
              "checks": {}}
    checks = report["checks"]
    checks["values"] = check_values(model, ref, batches)
    checks["gradient"] = check_gradient(model, ref, *batches["right"])
    del ref
    model16 = model.to(torch.bfloat16).train()
    checks["fused"] = check_fused(model16, batches["right"], unpadded)
    checks["saved_txt"] = check_saved(model16, *batches["right"])
    report["cost"] = measure_cost(model16, *batches["right"], device)
    report["ok"] = all(c["ok"] if "ok" in c else all(v["ok"] for v in c.values()) for c in checks.values())
    for name, result in checks.items():
        print(f"{name:10s} {result}")
    print("cost      ", report["cost"])
    print("sink check:", "PASS" if report["ok"] else "FAIL")
    save_json(report, args.out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
