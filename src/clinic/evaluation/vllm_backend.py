"""Optional generation backend on vLLM (``pip install clinic[vllm]``), with a fallback to HF.

:func:`generate_with` is what evaluation calls: ``backend="hf"`` is
:func:`clinic.evaluation.generate.generate` (batched greedy HF decoding); ``backend="vllm"`` runs
the same prompts (the same token ids) greedily on vLLM and post-processes the new tokens exactly
like the HF path (cut at the first stop token, special tokens skipped, stripped). When vLLM is
not importable it warns and falls back to the HF path.

vLLM runs in a separate process (``multiprocessing`` spawn): the model (adapters merged) is saved
to a temporary directory, the child loads it, generates and writes the token ids to a file, and
exits, so all of vLLM's GPU memory (weights, KV cache) is released before the judges run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import tempfile
import warnings
from pathlib import Path

from ..errors import ClinicError

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ClinicError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def generate_with(backend: str, model, tokenizer, prompt_ids: list[list[int]], *, batch_size: int = 16,
                  max_new_tokens: int = 64, desc: str = "generate") -> list[str]:
    """Greedy answers to ``prompt_ids`` on ``backend`` (``hf`` or ``vllm``), in prompt order."""
    from .generate import generate

    check_backend(backend)
    if backend == "vllm":
        if vllm_available():
            return generate_vllm(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens)
        message = "vllm is not installed (pip install clinic[vllm]); falling back to batched HF generation"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning(message)
    return generate(model, tokenizer, prompt_ids, batch_size=batch_size, max_new_tokens=max_new_tokens, desc=desc)


def generate_vllm(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int = 64) -> list[str]:
    """Greedy answers from vLLM in a spawned process; post-processed like the HF path."""
    from .generate import _cut_at_stop, stop_token_ids

    if not prompt_ids:
        return []
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ClinicError("cannot generate from an empty prompt (0 tokens)")
    stops = stop_token_ids(model, tokenizer)
    with tempfile.TemporaryDirectory(prefix="clinic-vllm-") as tmp:
        model_dir, result = Path(tmp) / "model", Path(tmp) / "tokens.json"
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        child = multiprocessing.get_context("spawn").Process(
            target=_vllm_worker, args=(str(model_dir), prompt_ids, max_new_tokens, stops, dtype, str(result))
        )
        child.start()
        child.join()
        if child.exitcode != 0 or not result.exists():
            raise RuntimeError(f"the vLLM generation process failed (exit code {child.exitcode})")
        tokens = json.loads(result.read_text())
    stop_set = set(stops)
    return [tokenizer.decode(_cut_at_stop(t, stop_set), skip_special_tokens=True).strip() for t in tokens]


def _vllm_worker(model_dir: str, prompt_ids: list[list[int]], max_new_tokens: int, stops: list[int], dtype: str,
                 result: str) -> None:  # pragma: no cover - runs only where vllm is installed
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, tokenizer=model_dir, dtype=dtype, seed=0, enforce_eager=True)
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=-1, max_tokens=max_new_tokens,
                            stop_token_ids=stops or None, skip_special_tokens=True, detokenize=False)
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    Path(result).write_text(json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
