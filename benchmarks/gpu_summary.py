"""One screen: what the GPU check (benchmarks/gpu_check.sh) measured, against clinic's goals.

Goals (issue 16): clinic's Surgery step <= 1.15x SFT's time and <= 1.10x its peak memory at the
Llama-3.2-1B shape, batches 10x512 and 2x2048 (full fine-tuning, bf16); T-Vaccine's peak memory
<= 20 GB and <= 0.6x Vaccine's at the Llama-2-7B shape with LoRA. Reads whatever JSON the check
left in its output folder (a step cut short leaves partial results or none) and writes
``summary.json`` beside them.

``--install FOLDER`` copies a GPU run's files (the folder the device tool returned) into
``benchmarks/results/``: ``surgery_cost.json`` as ``surgery_cost_cuda.json``, the ``cuda``
entry of ``alignment_cost.json`` merged into the existing file, the rest under
``benchmarks/results/gpu_check/``.

Run::

    python benchmarks/gpu_summary.py OUT_DIR [--dry-run]
    python benchmarks/gpu_summary.py --install FILES_AT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _common import save_json

RESULTS = Path(__file__).resolve().parent / "results"
SURGERY_GOALS = {"time_ratio": 1.15, "mem_ratio": 1.10}
SURGERY_SHAPES = [(10, 512), (2, 2048)]
TVACCINE_GOALS = {"peak_gb": 20.0, "memory_vs_vaccine": 0.6}


def _load(folder: Path, name: str) -> dict | None:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_DRY = {"run": False}  # a dry run's tiny CPU shapes measure nothing: no verdicts then


def _verdict(value, goal) -> str:
    if value is None:
        return "not measured"
    if _DRY["run"]:
        return f"{value:.3g} (goal <= {goal:g} applies to the GPU shapes only)"
    return f"{value:.3g} ({'meets' if value <= goal else 'MISSES'} <= {goal:g})"


def surgery_lines(report: dict | None, dry: bool) -> tuple[list[str], dict]:
    if not report:
        return ["Surgery: no result"], {"measured": False}
    shape = report["shape"]["name"]
    lines = [f"Surgery vs SFT ({shape}, {'bf16' if report.get('bf16') else 'fp32'}, full FT, "
             f"median of {report['steps']} steps{'' if report.get('complete') else ', RUN CUT SHORT'}):"]
    verdicts = {}
    seen = {(b["batch"], b["seq"]): b for b in report.get("results", [])}
    wanted = SURGERY_SHAPES if not dry else list(seen)
    for key in wanted:
        block = seen.get(key, {"variants": []})
        rows = {r["variant"]: r for r in block["variants"]}
        for variant in ("surgery-clinic", "surgery-reference", "surgery-clinic-joint", "surgery-clinic-vonly"):
            r = rows.get(variant)
            if r is None:
                if variant == "surgery-clinic":
                    lines.append(f"  {key[0]}x{key[1]:<5} {variant:22s} not measured")
                    verdicts[f"{key[0]}x{key[1]}"] = None
                continue
            if "error" in r:
                lines.append(f"  {key[0]}x{key[1]:<5} {variant:22s} failed: {r['error'][:90]}")
                continue
            time_ratio, mem_ratio = r.get("time_ratio"), r.get("mem_ratio")
            if variant == "surgery-clinic":
                lines.append(f"  {key[0]}x{key[1]:<5} {variant:22s} time x SFT {_verdict(time_ratio, SURGERY_GOALS['time_ratio'])}"
                             f", memory x SFT {_verdict(mem_ratio, SURGERY_GOALS['mem_ratio'])}"
                             f"  [SFT {rows['sft']['step_s'] * 1000:.0f} ms, {rows['sft']['peak_mem_mb'] / 1024:.1f} GB]")
                verdicts[f"{key[0]}x{key[1]}"] = {"time_ratio": time_ratio, "mem_ratio": mem_ratio,
                                                  "meets": time_ratio is not None and mem_ratio is not None
                                                  and time_ratio <= SURGERY_GOALS["time_ratio"]
                                                  and mem_ratio <= SURGERY_GOALS["mem_ratio"]}
            else:
                lines.append(f"  {key[0]}x{key[1]:<5} {variant:22s} time x SFT {time_ratio:.3g}, memory x SFT {mem_ratio:.3g}")
    return lines, verdicts


def tvaccine_lines(record: dict | None, dry: bool) -> tuple[list[str], dict]:
    if not record:
        return ["T-Vaccine: no result"], {"measured": False}
    device = "cuda" if "cuda" in record else "cpu"
    rec = record[device]
    results = rec["results"]
    mem_key = "peak_mb" if device == "cuda" else "train_delta_mb"
    lines = [f"Alignment cost ({rec['shape']['name']}, LoRA, batch {rec['batch']}x{rec['seq_len']}, "
             f"{rec['timed_steps']} timed steps{'' if rec.get('complete') else ', RUN CUT SHORT'}):"]
    for variant, r in results.items():
        if "error" in r:
            lines.append(f"  {variant:16s} failed: {r['error'][:100]}")
            continue
        ratio = rec["ratios_to_sft"].get(variant, {})
        lines.append(f"  {variant:16s} {r['step_s'] * 1000:8.0f} ms  {r[mem_key] / 1024:7.2f} GB"
                     f"  x SFT: time {ratio.get('time', float('nan')):.3g}, memory {ratio.get('memory', float('nan')):.3g}")
    tv = results.get("tvaccine", {})
    peak_gb = tv[mem_key] / 1024 if mem_key in tv else None
    vs_vaccine = (rec.get("tvaccine_vs_vaccine") or {}).get("memory")
    label = "peak" if device == "cuda" else "train delta (CPU stand-in for the peak)"
    lines.append(f"  T-Vaccine {label}: {_verdict(peak_gb, TVACCINE_GOALS['peak_gb'])} GB; "
                 f"memory x Vaccine: {_verdict(vs_vaccine, TVACCINE_GOALS['memory_vs_vaccine'])}")
    meets = peak_gb is not None and vs_vaccine is not None and peak_gb <= TVACCINE_GOALS["peak_gb"] \
        and vs_vaccine <= TVACCINE_GOALS["memory_vs_vaccine"]
    return lines, {"peak_gb": peak_gb, "memory_vs_vaccine": vs_vaccine, "meets": meets}


def summarize(folder: Path, dry: bool) -> dict:
    _DRY["run"] = dry
    env, sink, smoke = _load(folder, "env.json"), _load(folder, "sink_check.json"), _load(folder, "smoke.json")
    steps = []
    if (folder / "steps.tsv").is_file():
        for line in (folder / "steps.tsv").read_text().splitlines():
            name, rc, seconds, limit = line.split("\t")
            steps.append({"step": name, "rc": rc, "seconds": int(seconds), "limit_s": int(limit)})
    surgery, surgery_verdicts = surgery_lines(_load(folder, "surgery_cost.json"), dry)
    tvaccine, tvaccine_verdict = tvaccine_lines(_load(folder, "alignment_cost.json"), dry)

    gpu = (env or {}).get("gpu", {}).get("name", "no GPU")
    packages = (env or {}).get("packages", {})
    versions = ", ".join(f"{n} {packages[n].get('version')}" for n in ("torch", "transformers", "trl", "datasets", "peft")
                         if n in packages)
    out = [("DRY RUN (CPU, tiny shapes: checks the plumbing, measures nothing)  " if dry else "")
           + f"GPU check on {gpu}; {versions or 'versions unknown'}",
           "steps: " + ", ".join(f"{s['step']} {'ok' if s['rc'] == '0' else 'rc=' + s['rc']} {s['seconds']}s/{s['limit_s']}s"
                                 for s in steps)]
    out += surgery + tvaccine
    if sink:
        c = sink["checks"]
        out.append(f"Sink attention SDPA vs eager ({sink['shape']['name']}, {sink['info']['device']}): "
                   f"{'PASS' if sink['ok'] else 'FAIL'}; fp32 max|diff| "
                   f"{max(v['fp32_max_abs_diff'] for v in c['values'].values()):.1e}, bf16 "
                   f"{max(v['bf16_max_abs_diff_vs_fp32_eager'] for v in c['values'].values()):.1e} (eager bf16 "
                   f"{max(v['eager_bf16_max_abs_diff_vs_fp32_eager'] for v in c['values'].values()):.1e}); "
                   f"grad rel {c['gradient'].get('max_relative_diff', float('nan')):.1e}; fused kernel "
                   f"{c['fused']['padded_clinic']}/{c['fused']['unpadded_clinic']}; T×T saved beyond SDPA: "
                   f"{'none' if c['saved_txt']['ok'] else c['saved_txt']['clinic']}; fwd+bwd x plain {sink['cost']['time_ratio']}")
    else:
        out.append("Sink attention check: no result")
    if smoke:
        out.append(f"Smoke run ({smoke['shape']}, bf16={smoke['bf16']}): {'PASS' if smoke['ok'] else 'FAIL'}; "
                   + "; ".join(f"{s['stage']} {'ok' if s['rc'] == 0 else 'rc=' + str(s['rc'])} {s.get('seconds', '')}s"
                               + (f" peak {s['metrics']['peak_memory_mb']:.0f} MB" if 'peak_memory_mb' in s.get('metrics', {}) else "")
                               for s in smoke["stages"] if s["stage"] != "serving"))
        for s in smoke["stages"]:
            if s["stage"] == "serving":
                out.append(f"Serving (1B shape, bf16): HF {s['hf']['prompts_per_s']} prompts/s, vLLM "
                           f"{s['vllm']['prompts_per_s']} prompts/s"
                           f"{'' if s['vllm_importable'] else ' (vLLM did not import: the HF fallback)'}; "
                           f"same greedy answers {s.get('same_answers')}/{s.get('answers')}")
        for s in smoke["stages"]:
            if s["rc"] != 0 and s["stage"] != "serving":
                out.append(f"  {s['stage']}: {' | '.join(s.get('error_tail', []))[:300]}")
    else:
        out.append("Smoke run: no result")
    failed_imports = {k: v for k, v in ((env or {}).get("imports") or {}).items() if v != "ok"}
    if failed_imports:
        out.append(f"imports that failed: {failed_imports}")
    print("\n".join(out))
    summary = {"dry_run": dry, "gpu": gpu, "steps": steps, "surgery": surgery_verdicts, "tvaccine": tvaccine_verdict,
               "sink_check_ok": sink["ok"] if sink else None, "smoke_ok": smoke["ok"] if smoke else None,
               "failed_imports": failed_imports, "text": out}
    save_json(summary, folder / "summary.json", quiet=True)
    return summary


def install(folder: Path) -> None:
    """Copy a GPU run's JSON into benchmarks/results (see the module docstring)."""
    summary = _load(folder, "summary.json")
    if not summary or summary.get("dry_run") or summary.get("gpu") in (None, "no GPU"):
        print(f"gpu_summary: error: {folder} holds no GPU run's results (a dry run, or no summary.json)", file=sys.stderr)
        sys.exit(2)
    surgery = folder / "surgery_cost.json"
    if surgery.is_file():
        shutil.copyfile(surgery, RESULTS / "surgery_cost_cuda.json")
    alignment = _load(folder, "alignment_cost.json")
    if alignment and "cuda" in alignment:
        merged = _load(RESULTS, "alignment_cost.json") or {}
        merged["cuda"] = alignment["cuda"]
        save_json(merged, RESULTS / "alignment_cost.json")
    target = RESULTS / "gpu_check"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("env.json", "sink_check.json", "smoke.json", "summary.json", "steps.tsv"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, target / name)
    print(f"installed the GPU results from {folder} into {RESULTS}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="the GPU check's output folder")
    parser.add_argument("--dry-run", action="store_true", help="label the summary as a CPU rehearsal")
    parser.add_argument("--install", metavar="FOLDER", help="copy a GPU run's results into benchmarks/results")
    args = parser.parse_args(argv)
    if args.install:
        install(Path(args.install))
        return 0
    if not args.folder:
        parser.error("give the output folder (or --install FOLDER)")
    summarize(Path(args.folder), args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
