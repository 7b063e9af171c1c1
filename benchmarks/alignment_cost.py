"""Peak memory and step time of the alignment-stage methods, as ratios to SFT.

Variants: ``sft``, ``vaccine``, ``tvaccine``, ``tvaccine-nockpt`` (T-Vaccine without the
activation checkpointing of inactive layers, to show where its saving comes from), ``repnoise``,
``booster``, ``tar-lite``. Each is the clinic trainer's own ``training_step`` followed by an AdamW
step, with LoRA (r=8, alpha=1, q,k,v,o,gate,up,down: the T-Vaccine alignment setting) on a
randomly initialised Llama-shaped model, batch 10 x 200 tokens (random token ids, the second half
labelled: a refusal-like answer), the harmful stream batches of the same shape. T-Vaccine: S=8 of
32 layers on the 7B shape; on the small CPU shape S is scaled to the same quarter of the layers
(2 of 8), otherwise every layer would be active. Its layer scoring runs in the warm-up step (and
then only every K=200 steps, as in the reference), the timed steps are ordinary steps.

Shapes:

- ``llama2-7b`` (CUDA, bf16 weights, bf16 autocast; LoRA weights fp32 as PEFT makes them):
  hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000;
- ``small`` (CPU, fp32): hidden 512, 8 layers, 8 heads, MLP 1376, vocabulary 4000, i.e. the
  7B model's hidden:MLP:vocabulary proportions (1 : 2.7 : 7.8) at 1/8 of the width, so
  per-layer activations and the logits weigh about what they weigh at 7B;
- ``smollm2-135m`` (CPU, fp32; ``--shape smollm2-135m --batch 8 --seq 128``: the protocol's step):
  SmolLM2-135M-Instruct's shape, hidden 576, 30 layers, 9 heads (3 key/value), MLP 1536,
  vocabulary 49152, tied embeddings. Its results go under the key ``cpu-smollm2-135m``.

Memory. CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps (after a warm-up step, so
gradients and AdamW states exist), every variant in a fresh subprocess. CPU: torch allocates
through the system allocator, so every variant runs in a fresh subprocess and reports its peak
resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) and the rise of that peak over the RSS
measured after the model, LoRA, trainer and batches were built ("train delta": activations,
gradients, optimizer states, recomputation buffers). The allocator may keep freed pages, so the
peak RSS is an upper bound of live tensor memory; ratios compare like with like. To keep that
bound tight, CPU workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc then maps every tensor
above 128 KiB separately and unmaps it when freed, instead of raising its threshold and keeping
freed activations resident); ``--default-malloc`` turns this off.

Time: the median over the timed steps of ``training_step`` + ``optimizer.step``, wall clock and
(CPU) process CPU time. On a shared machine the wall clock depends on what else runs; with
``--threads 1`` the process CPU time does much less, so it is the CPU figure to compare. The
load average is recorded with the results.

Run::

    python benchmarks/alignment_cost.py                  # CUDA (7B shape) if available, else CPU (small)
    python benchmarks/alignment_cost.py --device cpu --steps 3 --threads 1

Results are printed and saved to ``benchmarks/results/alignment_cost.json`` (one entry per
device, merged into the file; ``--out`` for another file), rewritten after every variant with
``"complete": false`` until the last one, so that a run cut short keeps what finished.
``--worker-timeout`` bounds each variant's subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import machine_info, save_json

VARIANTS = ["sft", "vaccine", "tvaccine", "tvaccine-nockpt", "repnoise", "booster", "tar-lite"]
RESULTS = Path(__file__).resolve().parent / "results" / "alignment_cost.json"
# glibc serves allocations above this size with mmap and returns them to the system on free;
# its default threshold adapts upwards (to 32 MiB) after frees, after which freed activations
# stay resident and the peak RSS overstates live memory.
MMAP_THRESHOLD = "131072"

SHAPES = {
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=1376, vocab_size=4000, tie_word_embeddings=False),
    # the protocol's model (docs/protocol.md): its vocabulary is 85x its width (the 7B shape's 7.8x),
    # so whatever projects hidden states onto the vocabulary (RepNoise's logit lens) weighs far more
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
}
DEFAULT_SHAPES = {"cuda": "llama2-7b", "cpu": "small"}


def method_of(variant: str) -> tuple[str, dict]:
    if variant == "tvaccine-nockpt":
        return "tvaccine", {"checkpoint_inactive": False}
    return variant, {}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(opts: dict) -> dict:
    import contextlib
    import logging
    import tempfile
    import warnings

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import datasets
    import transformers
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM

    from clinic.data.formatting import training_row
    from clinic.modeling.training import train_config
    from clinic.methods.registry import get_method
    from clinic.modeling.models import attach_lora, tiny_tokenizer
    from clinic.data.samples import Sample

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])

    device, variant, shape = opts["device"], opts["variant"], SHAPES[opts["shape"]]
    method, method_options = method_of(variant)
    bf16 = device == "cuda"
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", **shape, max_position_embeddings=4096)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if bf16 else torch.float32)
    model.config.use_cache = False
    # max_length only truncates the placeholder rows the trainer is built with (the batches are
    # synthetic, --seq long): a short --seq would cut their answers off and the trainer refuse them
    cfg = train_config("tvaccine-align", batch_size=opts["batch"], max_length=max(opts["seq"], 512), bf16=bf16,
                       max_steps=100)
    model = attach_lora(model, cfg.lora())
    layers = shape["num_hidden_layers"]
    if method == "tvaccine":
        method_options["active_layers"] = max(1, layers // 4)  # S = 8 of 32, scaled
    # the trainer only needs some data to be built; batches are synthetic (exact shape)
    tok = tiny_tokenizer()
    fmt = cfg.prompt_format()
    rows = [training_row(tok, fmt, f"question {i}", "", f"answer {i}") for i in range(4)]
    spec = get_method(method, "align")
    tmp = tempfile.mkdtemp()
    trainer = spec.trainer(
        model=model, args=cfg.sft_config(tmp, disable_tqdm=True), train_dataset=Dataset.from_list(rows),
        processing_class=tok, prompt_format=fmt, method_config=spec.config(**method_options),
        extra_data={"harmful": [Sample(f"other question {i}", "", f"harmful {i}") for i in range(4)]},  # no shared prompt: RepNoise takes next_batch
    )
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    gen = torch.Generator().manual_seed(1)

    def batch(size: int) -> dict:
        ids = torch.randint(10, shape["vocab_size"], (size, opts["seq"]), generator=gen)
        labels = ids.clone()
        labels[:, : opts["seq"] // 2] = -100
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}

    main_batch = batch(opts["batch"])
    harmful = {n: batch(n) for n in {1, opts["batch"]}}
    # the same signature as ClinicTrainer.next_batch (T-Vaccine's layer scoring passes shard=False)
    trainer.next_batch = lambda name, batch_size=None, shard=True: harmful[batch_size or opts["batch"]]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            trainer.training_step(model, main_batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    _sync(device)
    rss_before = _rss_mb()
    step()  # warm-up: allocates gradients and AdamW states; T-Vaccine scores its layers here
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / 2**20
    times, cpu_times = [], []
    for _ in range(opts["steps"]):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    out = {
        "variant": variant,
        "method": method,
        "method_options": method_options,
        "step_s": statistics.median(times),
        "step_times_s": [round(t, 4) for t in times],
        "step_cpu_s": statistics.median(cpu_times),
    }
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["allocated_before_steps_mb"] = base_mb
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_rss_mb"] = peak
        out["rss_before_mb"] = rss_before
        out["train_delta_mb"] = peak - rss_before
    if method == "tvaccine":
        out["active_layers"] = trainer.active
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--shape", choices=list(SHAPES), default=None)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each worker (CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--default-malloc", action="store_true",
                        help="CPU: keep glibc's adaptive mmap threshold (freed tensors may then stay resident)")
    parser.add_argument("--worker-timeout", type=float, default=None,
                        help="seconds one variant's subprocess may run before it is recorded as failed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or DEFAULT_SHAPES[device]
    steps = args.steps or (5 if device == "cuda" else 3)
    command = "python benchmarks/alignment_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    # the JSON is rewritten after every variant, so that a run cut short (the GPU check's per-step
    # time limit) keeps the variants that finished (SFT, Vaccine and T-Vaccine run first)
    for variant in args.variants:
        opts = {"device": device, "shape": shape, "variant": variant, "batch": args.batch, "seq": args.seq,
                "steps": steps, "threads": args.threads}
        env = dict(os.environ)
        if device == "cpu" and not args.default_malloc:
            env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(opts)], capture_output=True,
                                  text=True, env=env, timeout=args.worker_timeout)
        except subprocess.TimeoutExpired:
            proc = None
        if proc is None or proc.returncode != 0:
            tail = [f"timed out after {args.worker_timeout:g} s"] if proc is None else (
                (proc.stderr or proc.stdout).strip().splitlines()[-5:])
            results[variant] = {"error": " | ".join(tail)}
            print(f"{variant:16s} FAILED: {results[variant]['error']}", flush=True)
        else:
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{variant:16s} {json.dumps({k: v for k, v in results[variant].items() if k != 'step_times_s'})}",
                  flush=True)
        record = _record(args, device, shape, steps, command, results,
                         complete=variant == args.variants[-1])
    print("\nratios to SFT:", json.dumps(record["ratios_to_sft"], indent=1))
    print("T-Vaccine / Vaccine:", record["tvaccine_vs_vaccine"])
    return record


def _record(args, device: str, shape: str, steps: int, command: str, results: dict, complete: bool) -> dict:
    """The results so far with their ratios, merged into ``args.out`` under the device's key (with
    the shape's name after it when the shape is not the device's default: ``cpu-smollm2-135m``)."""
    mem_key = "peak_mb" if device == "cuda" else "train_delta_mb"
    ratios = {}
    base = results.get("sft", {})
    for variant, r in results.items():
        if "error" in r or "error" in base or not base:
            continue
        ratios[variant] = {"time": round(r["step_s"] / base["step_s"], 3), "memory": round(r[mem_key] / base[mem_key], 3)}
        if device == "cpu":
            ratios[variant]["cpu_time"] = round(r["step_cpu_s"] / base["step_cpu_s"], 3)
            ratios[variant]["peak_rss"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
    vac, tv = results.get("vaccine", {}), results.get("tvaccine", {})
    tv_vs_vaccine = None
    if vac and tv and "error" not in vac and "error" not in tv:
        tv_vs_vaccine = {"time": round(tv["step_s"] / vac["step_s"], 3), "memory": round(tv[mem_key] / vac[mem_key], 3)}
        if device == "cpu":
            tv_vs_vaccine["cpu_time"] = round(tv["step_cpu_s"] / vac["step_cpu_s"], 3)

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "complete": complete,
        "machine": machine_info(device),
        "shape": {"name": shape, **SHAPES[shape]},
        "batch": args.batch,
        "seq_len": args.seq,
        "timed_steps": steps,
        "memory_measure": "torch.cuda.max_memory_allocated" if device == "cuda" else (
            "ru_maxrss rise over RSS before training"
            + ("" if args.default_malloc else f", MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', MMAP_THRESHOLD)}")),
        "results": results,
        "ratios_to_sft": ratios,
        "tvaccine_vs_vaccine": tv_vs_vaccine,
    }
    if device == "cuda" and tv and "peak_mb" in tv:
        record["tvaccine_goal"] = {"peak_gb": round(tv["peak_mb"] / 1024, 2), "goal_peak_gb": 20,
                                   "goal_ratio_to_vaccine": 0.6}
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[device if shape == DEFAULT_SHAPES[device] else f"{device}-{shape}"] = record
    save_json(existing, args.out, quiet=not complete)
    return record


if __name__ == "__main__":
    main()
