"""Optional generation backend on vLLM (``pip install clinic[vllm]``), with a fallback to HF.

:func:`generate_with` is what evaluation calls: ``backend="hf"`` is
:func:`clinic.evaluation.generate.generate` (batched greedy HF decoding); ``backend="vllm"`` runs
the same prompts (the same token ids) greedily on vLLM and post-processes the new tokens exactly
like the HF path (cut at the first stop token, special tokens skipped, stripped). When vLLM is
not importable it warns and falls back to the HF path.

How the model reaches vLLM (:class:`VllmOptions`, execution settings, never hashed):

- ``merged``: the chain (base + adapters, merged) is saved in the dtype asked for to a temporary
  folder and vLLM loads that;
- ``lora``: vLLM loads the base itself and the chain's one adapter is a ``LoRARequest`` (no merged
  copy written: faster for a 7B model); only for a chain of exactly one adapter on a base vLLM can
  load (``auto`` picks it then, else ``merged``).

Tensor parallelism spans the visible GPUs; ``enforce_eager`` (no CUDA graphs) only when asked.

**The guard.** Tools that hand an adapter to vLLM can drop it silently and evaluate the base model.
Before any answer is scored, the first ``guard`` prompts are answered by HF too; vLLM's greedy
answers must equal HF's, except where the first differing token was a near-tie in HF's own logits
(its log-probability within :data:`NEAR_TIE` of HF's choice: kernels that sum in another order may
flip such a token, docs/generation.md). Otherwise the stage stops with a one-line error.

vLLM runs in a separate process (``multiprocessing`` spawn): the child loads the model, generates,
writes the token ids to a file and exits, so all of vLLM's GPU memory (weights, KV cache) is
released before the judges run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClinicError

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
MODES = ("auto", "merged", "lora")
NEAR_TIE = 0.05  # nats: a greedy token this close to HF's choice may flip under another summation order
GUARD_PROMPTS = 4


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ClinicError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass
class VllmOptions:
    """How a model reaches vLLM (execution settings: never part of a stage's hash)."""

    chain: object = None  # the ModelChain the model was loaded from (for the lora mode)
    mode: str = "auto"
    dtype: str = "auto"  # what the model was loaded in, unless given
    tensor_parallel: int | None = None  # default: every visible GPU
    enforce_eager: bool = False
    guard: int = GUARD_PROMPTS

    def __post_init__(self):
        if self.mode not in MODES:
            raise ClinicError(f"unknown vLLM mode {self.mode!r}; choose one of {', '.join(MODES)}")


def generate_with(backend: str, model, tokenizer, prompt_ids: list[list[int]], *, batch_size: int = 16,
                  max_new_tokens: int = 64, desc: str = "generate", vllm: VllmOptions | None = None) -> list[str]:
    """Greedy answers to ``prompt_ids`` on ``backend`` (``hf`` or ``vllm``), in prompt order."""
    from .generate import generate

    check_backend(backend)
    if backend == "vllm":
        if vllm_available():
            return generate_vllm(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, options=vllm)
        message = "vllm is not installed (pip install clinic[vllm]); falling back to batched HF generation"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning(message)
    return generate(model, tokenizer, prompt_ids, batch_size=batch_size, max_new_tokens=max_new_tokens, desc=desc)


def _lora_source(chain) -> tuple[str, str] | None:
    """``(base, adapter)`` when vLLM can load the base itself and serve the one adapter as a LoRA
    request; None otherwise (several adapters, a tiny or GGUF base)."""
    if chain is None or len(getattr(chain, "adapters", [])) != 1 or str(chain.base).startswith("tiny-random-"):
        return None
    from ..modeling.models import resolve_model_path

    try:
        base = resolve_model_path(chain.base)
    except ClinicError:
        return None
    return None if str(base).lower().endswith(".gguf") else (str(base), chain.adapters[0])


def generate_vllm(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int = 64,
                  options: VllmOptions | None = None) -> list[str]:
    """Greedy answers from vLLM in a spawned process, checked against HF's on the first prompts
    (the guard), post-processed like the HF path."""
    import torch

    from .generate import _cut_at_stop, stop_token_ids

    options = options or VllmOptions()
    if not prompt_ids:
        return []
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ClinicError("cannot generate from an empty prompt (0 tokens)")
    stops = stop_token_ids(model, tokenizer)
    dtype = options.dtype if options.dtype != "auto" else str(next(model.parameters()).dtype).removeprefix("torch.")
    lora = _lora_source(options.chain) if options.mode in ("auto", "lora") else None
    if options.mode == "lora" and lora is None:
        raise ClinicError("--vllm-mode lora needs a model of one LoRA adapter on a base vLLM can load; use merged")
    parallel = options.tensor_parallel or max(1, torch.cuda.device_count())
    with tempfile.TemporaryDirectory(prefix="clinic-vllm-") as tmp:
        model_dir, result = Path(tmp) / "model", Path(tmp) / "tokens.json"
        if lora is None:
            model.save_pretrained(model_dir, safe_serialization=True)
            tokenizer.save_pretrained(model_dir)
            source, adapter = str(model_dir), None
        else:
            source, adapter = lora
        spec = {"model": source, "adapter": adapter, "dtype": dtype, "tensor_parallel_size": parallel,
                "enforce_eager": options.enforce_eager, "max_new_tokens": max_new_tokens, "stops": stops}
        child = multiprocessing.get_context("spawn").Process(target=_vllm_worker, args=(spec, prompt_ids, str(result)))
        child.start()
        child.join()
        if child.exitcode != 0 or not result.exists():
            raise RuntimeError(f"the vLLM generation process failed (exit code {child.exitcode})")
        tokens = json.loads(result.read_text())
    stop_set = set(stops)
    tokens = [_cut_at_stop(t, stop_set) for t in tokens]
    check_against_hf(model, tokenizer, prompt_ids[: options.guard], tokens[: options.guard], max_new_tokens, stop_set)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


def check_against_hf(model, tokenizer, prompt_ids, vllm_tokens, max_new_tokens: int, stops: set[int]) -> None:
    """The guard: vLLM's greedy tokens equal HF's on ``prompt_ids``, or first differ at a near-tie
    of HF's logits; else a one-line error (the adapter was likely dropped)."""
    import torch

    from .generate import generate_ids

    if not prompt_ids:
        return
    hf_tokens = generate_ids(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens)
    bad = []
    for i, (prompt, ours, theirs) in enumerate(zip(prompt_ids, hf_tokens, vllm_tokens)):
        ours = [t for t in ours]
        j = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if j is None:
            if len(_until_stop(ours, stops)) == len(_until_stop(theirs, stops)):
                continue
            j = min(len(ours), len(theirs))
            if j >= max_new_tokens:
                continue
        if j < len(ours) and j < len(theirs):
            with torch.inference_mode():
                ids = torch.tensor([list(prompt) + ours[:j]], device=next(model.parameters()).device)
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
            if float(logp[ours[j]] - logp[theirs[j]]) <= NEAR_TIE:
                continue  # a near-tie: a different summation order may flip it
        bad.append((i, j))
    if bad:
        i, j = bad[0]
        raise ClinicError(f"vLLM's greedy answers differ from HF's beyond near-ties on {len(bad)} of "
                          f"{len(prompt_ids)} guard prompts (first: prompt {i}, token {j}): vLLM is likely not "
                          f"evaluating this model (a dropped adapter?); nothing was scored")


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    return next((tokens[:k] for k, t in enumerate(tokens) if t in stops), tokens)


def _vllm_worker(spec: dict, prompt_ids: list[list[int]], result: str) -> None:
    """In the spawned process: vLLM's greedy token ids for every prompt, to ``result``."""
    from vllm import LLM, SamplingParams

    kwargs = {"model": spec["model"], "tokenizer": spec["model"], "dtype": spec["dtype"], "seed": 0,
              "tensor_parallel_size": spec["tensor_parallel_size"], "enforce_eager": spec["enforce_eager"]}
    request = None
    if spec["adapter"]:
        from vllm.lora.request import LoRARequest

        kwargs["enable_lora"] = True
        request = LoRARequest("clinic", 1, spec["adapter"])
    llm = LLM(**kwargs)
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=-1, max_tokens=spec["max_new_tokens"],
                            stop_token_ids=spec["stops"] or None, skip_special_tokens=True, detokenize=False)
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    outputs = llm.generate(prompts, params, use_tqdm=False, **({"lora_request": request} if request else {}))
    Path(result).write_text(json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
