"""Step time and peak memory of SFT, reference-style Surgery and clinic's Surgery, as ratios to SFT.

Variants (full fine-tuning, AdamW, random init; one optimizer step each):

- ``sft``: SDPA attention, CE on the user batch (the baseline);
- ``surgery-reference``: what the reference does: eager attention, ``output_attentions=True`` on
  every pass (user batch + one harmful + one harmless probe, batch 1 each, full model with LM
  head), one backward through all three graphs;
- ``surgery-clinic``: clinic's Surgery step (``SurgeryTrainer.training_step``): SDPA for the user
  batch, backward; then the two probes as one right-padded batch through the decoder only, the
  sink column from the same SDPA call (Q/K/V zero-padded to a common width), backward of λ·R;
- ``surgery-clinic-joint``: the same with one backward through both graphs
  (``--no-separate-backward``);
- ``surgery-clinic-vonly``: the sink channel appended to V only (Q/K not padded: the first
  prototype's layout), to show what the padding buys.

The regulariser's backward always runs here (the trainer skips it when no head is positive,
which on a random model is common: skipping would flatter clinic).

**Memory.** Every variant runs alone in a fresh subprocess. CUDA: ``torch.cuda.max_memory_allocated``
over the measured steps. CPU: torch allocates through the system allocator, so ``tracemalloc``
sees nothing; the worker reports its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``)
and the rise of that peak over the RSS after the model, data and optimizer were built (weights,
gradients and AdamW states are then allocated in the first, warm-up step, the same for every
variant). The allocator may keep freed pages, so peak RSS bounds live tensor memory from above;
the ratios compare like with like.

**Time.** CUDA: the median step of each variant's subprocess (GPU timings are steady). CPU: on a
shared machine the load drifts, so all variants are timed in *one* process on one model,
interleaved step by step (sft, reference, clinic, …, sft, reference, …; the attention
implementation is switched per step) and the median per variant is reported; torch runs one
thread (``--threads``), since OpenMP barriers make two-thread timings on a busy 2-core box erratic.

Run::

    python benchmarks/surgery_cost.py                  # CUDA if available, else the CPU shape
    python benchmarks/surgery_cost.py --device cpu --steps 12

Results are printed and saved to ``benchmarks/results/surgery_cost_<device>.json`` (``--output``),
rewritten after every variant's subprocess with ``"complete": false`` until the run ends, so
that a run cut short keeps what finished; the variants run in ``VARIANTS`` order over all batch
shapes, SFT and clinic's Surgery first. ``--worker-timeout`` bounds each subprocess.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import machine_info, save_json

# in the order they run: what the goals compare (SFT, clinic's Surgery) first
VARIANTS = ["sft", "surgery-clinic", "surgery-reference", "surgery-clinic-joint", "surgery-clinic-vonly"]

SHAPES = {
    # Llama-3.2-1B: the LM head is ~21% of the per-token FLOPs
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=128256, head_dim=64),
    # CPU stand-in; vocabulary 8192 keeps the LM head at ~35% of the FLOPs (32000 would make it 2/3)
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1024, vocab_size=8192, head_dim=32),
}
LAMBDA = 300.0


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class Bench:
    """One model + optimizer + data; ``step(variant)`` runs one optimizer step of a variant."""

    def __init__(self, opts: dict):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from clinic.modeling import attention

        self.attention = attention
        self.device = opts["device"]
        if opts.get("threads"):
            torch.set_num_threads(opts["threads"])
        dtype = torch.bfloat16 if opts["bf16"] else torch.float32
        torch.manual_seed(0)
        config = AutoConfig.for_model("llama", **SHAPES[opts["shape"]], max_position_embeddings=8192,
                                      tie_word_embeddings=False, rope_theta=500000.0)
        with torch.device(self.device):  # random init on the GPU: seconds less per subprocess at the 1B shape
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.model.train()
        attention.register_sink_attention()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        B, T = opts["batch"], opts["seq"]
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(10, config.vocab_size, (B, T), generator=g).to(self.device)
        self.mask = torch.ones_like(self.ids)
        self.lm, self.lr = opts["probe_lengths"]
        self.probes = torch.randint(10, config.vocab_size, (2, max(self.lm, self.lr)), generator=g).to(self.device)
        self.probe_mask = torch.zeros_like(self.probes)
        self.probe_mask[0, : self.lm] = 1
        self.probe_mask[1, : self.lr] = 1

    def _reference_sink(self, x):
        import torch

        out = self.model(input_ids=x, output_attentions=True, use_cache=False)
        return torch.stack([a[0, :, 1:, 0].float().mean(-1) for a in out.attentions])  # [L, H]

    def step(self, variant: str) -> None:
        import torch

        model = self.model
        impl = {"sft": "sdpa", "surgery-reference": "eager"}.get(variant, self.attention.SINK_ATTENTION)
        if model.config._attn_implementation != impl:
            model.set_attn_implementation(impl)
        batch = dict(input_ids=self.ids, attention_mask=self.mask, labels=self.ids, use_cache=False)
        if variant == "sft":
            model(**batch).loss.backward()
        elif variant == "surgery-reference":
            ce = model(**batch, output_attentions=True).loss
            d = self._reference_sink(self.probes[:1, : self.lm]) - self._reference_sink(self.probes[1:, : self.lr])
            (ce + LAMBDA * torch.relu(d).mean()).backward()
        else:
            kw = {"pad_qk": False} if variant == "surgery-clinic-vonly" else {}
            ce = model(**batch).loss
            joint = variant == "surgery-clinic-joint"
            if not joint:
                ce.backward()
            values = self.attention.sink_attention_values(model, self.probes, self.probe_mask, **kw)
            reg = LAMBDA * torch.relu(values[:, 0] - values[:, 1]).mean()
            (ce + reg if joint else reg).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, variant: str) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step(variant)
        _sync(self.device)
        return time.perf_counter() - t0


def memory_worker(opts: dict) -> dict:
    """One variant alone: peak memory (and its own step times)."""
    import torch

    bench = Bench(opts)
    variant = opts["variant"]
    _sync(bench.device)
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for i in range(opts["warmup"] + opts["steps"]):
        if i == opts["warmup"] and bench.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = bench.timed(variant)
        if i >= opts["warmup"]:
            times.append(t)
    result = {"variant": variant, "step_s": statistics.median(times), "step_s_all": times}
    if bench.device == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_mem_mb"] = peak
        result["peak_rss_rise_mb"] = peak - rss_setup
    return result


def timing_worker(opts: dict) -> dict:
    """All variants on one model, interleaved step by step: {variant: [seconds, ...]}."""
    bench = Bench(opts)
    times: dict[str, list[float]] = {v: [] for v in opts["variants"]}
    for i in range(opts["warmup"] + opts["steps"]):
        for variant in opts["variants"]:
            t = bench.timed(variant)
            if i >= opts["warmup"]:
                times[variant].append(t)
    return times


def _subprocess(kind: str, opts: dict, timeout: float | None = None) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--_worker", kind, "--_opts", json.dumps(opts)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": err}
    return json.loads(line[len("RESULT "):])


def _with_ratios(rows: dict[str, dict]) -> list[dict]:
    """The rows of one shape, each with its time and memory as ratios to SFT's (when both ran)."""
    base = rows.get("sft", {"error": "not run"})
    for r in rows.values():
        if "error" in r or "error" in base or "step_s" not in r:
            continue
        r["time_ratio"] = r["step_s"] / base["step_s"]
        r["mem_ratio"] = r["peak_mem_mb"] / base["peak_mem_mb"]
        if base.get("peak_rss_rise_mb"):
            r["rss_rise_ratio"] = r["peak_rss_rise_mb"] / base["peak_rss_rise_mb"]
    return list(rows.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--shape", choices=list(SHAPES), default=None, help="default: llama-1b on CUDA, small on CPU")
    p.add_argument("--batches", default=None, help="comma list BxT (default: 10x512,2x2048 on CUDA, 4x256 on CPU)")
    p.add_argument("--probe-lengths", default="128,112",
                   help="harmful,harmless probe tokens (BeaverTails QA pairs average ~420 characters: ~120 "
                        "Llama-3 tokens with the chat template; the reference caps them at 512)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per variant (default 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory-steps", type=int, default=2, help="measured steps of each memory subprocess (CPU)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, torch's on CUDA)")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/surgery_cost_<device>.json)")
    p.add_argument("--worker-timeout", type=float, default=None,
                   help="seconds one variant's subprocess may run before it is recorded as failed")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_opts", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        opts = json.loads(args._opts)
        result = memory_worker(opts) if args._worker == "memory" else timing_worker(opts)
        print("RESULT " + json.dumps(result))
        return 0

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or ("llama-1b" if device == "cuda" else "small")
    batches = args.batches or ("10x512,2x2048" if device == "cuda" else "4x256")
    steps = args.steps or 10
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else 0)
    probe_lengths = [int(x) for x in args.probe_lengths.split(",")]
    variants = args.variants.split(",")
    if "sft" not in variants:
        variants.insert(0, "sft")
    bf16 = device == "cuda"
    report = {"info": machine_info(device), "shape": {"name": shape, **SHAPES[shape]}, "bf16": bf16,
              "threads": threads or None, "probe_lengths": probe_lengths, "steps": steps, "warmup": args.warmup,
              "timing": "per-variant subprocess" if device == "cuda" else "interleaved in one process",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/surgery_cost.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "results": []}
    out = Path(args.output) if args.output else Path(__file__).resolve().parent / "results" / f"surgery_cost_{device}.json"
    specs = [tuple(int(x) for x in spec.lower().split("x")) for spec in batches.split(",")]
    blocks: dict[tuple[int, int], dict[str, dict]] = {spec: {} for spec in specs}

    def publish(complete: bool) -> None:
        report["results"] = [{"batch": B, "seq": T, "variants": _with_ratios(rows)}
                             for (B, T), rows in blocks.items() if rows]
        report["complete"] = complete
        save_json(report, out, quiet=not complete)

    # Variant by variant over all shapes, the JSON rewritten after each subprocess: a run cut short
    # (the GPU check's per-step time limit) keeps SFT and clinic's Surgery at every shape.
    def opts(B: int, T: int, **extra) -> dict:
        return {"device": device, "shape": shape, "bf16": bf16, "batch": B, "seq": T, "probe_lengths": probe_lengths,
                "warmup": args.warmup, "threads": threads, **extra}

    for variant in variants:
        for B, T in specs:
            mem_steps = steps if device == "cuda" else args.memory_steps
            result = _subprocess("memory", opts(B, T, variant=variant, steps=mem_steps), args.worker_timeout)
            blocks[(B, T)][variant] = {"variant": variant, **result}
            print(f"{B}x{T} {variant}: memory run done", file=sys.stderr)
            publish(False)
    if device != "cuda":
        for (B, T), rows in blocks.items():
            timing = _subprocess("timing", opts(B, T, variants=variants, steps=steps), args.worker_timeout)
            for variant in variants:
                if "error" in timing:
                    rows[variant]["error"] = timing["error"]
                    continue
                rows[variant]["isolated_step_s"] = rows[variant].pop("step_s", None)
                rows[variant]["step_s"] = statistics.median(timing[variant])
                rows[variant]["step_s_all"] = timing[variant]
    publish(True)

    mem_name = "peak alloc MB" if device == "cuda" else "peak RSS MB"
    where = report["info"].get("gpu") or report["info"].get("processor")
    print(f"\nSurgery cost on {device} ({where}), shape {shape}, probes {probe_lengths[0]}+{probe_lengths[1]} "
          f"tokens, median of {steps} steps")
    header = f"{'batch':>9} {'variant':<22} {'step s':>8} {'x SFT':>6} {mem_name:>14} {'x SFT':>6}"
    if device != "cuda":
        header += f" {'RSS rise MB':>12} {'x SFT':>6}"
    print(header)
    for block in report["results"]:
        for r in block["variants"]:
            name = f"{block['batch']}x{block['seq']}"
            if "error" in r:
                print(f"{name:>9} {r['variant']:<22} failed: {r['error']}")
                continue
            line = (f"{name:>9} {r['variant']:<22} {r['step_s']:8.3f} {r.get('time_ratio', float('nan')):6.2f} "
                    f"{r['peak_mem_mb']:14.0f} {r.get('mem_ratio', float('nan')):6.2f}")
            if device != "cuda":
                line += f" {r['peak_rss_rise_mb']:12.0f} {r.get('rss_rise_ratio', float('nan')):6.2f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
