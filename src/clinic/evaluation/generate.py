"""Batched greedy decoding that returns the same text as one-prompt-at-a-time decoding.

:func:`generate` takes token-id lists (see :func:`clinic.data.formatting.encode_prompts`),
sorts them by length so that a batch holds prompts of similar length (little padding), pads
each batch on the **left** with ``tokenizer.pad`` (the tokenizer's pad token; one without is
refused, clinic's loaders set one) and an attention mask, runs
``model.generate`` greedily (``do_sample=False``, ``num_beams=1``) and returns the decoded
*new* tokens of every prompt, in the original order.

Why left-padded batches give the unbatched answer: transformers derives ``position_ids`` from
the attention mask (``cumsum - 1``), so a left-padded prompt sees the same positions as alone;
the padded keys are masked out of every attention row. What remains is floating-point
summation order (a batch of 16 may use another matmul kernel than a batch of 1); on CPU fp32
that is within a few ulps, and greedy argmax does not move for any test in
``tests/test_generate.py``.

Shared prefix: evaluation prompts share their chat template's opening (SmolLM2's system prompt
and ``<|im_start|>user``: 24 of 46 tokens on BeaverTails). Its keys and values are computed once
per call (a one-row forward) and copied into every batch's cache; the batch holds
``[prefix | left padding | rest]``, so the positions (``cumsum - 1`` of the mask) and the visible
keys of every row are exactly those of the unbatched prompt, and only the rest is prefilled.
Off with ``share_prefix=False``, and where it would not be exact: a prompt that is all prefix
(the cache must leave one token to feed), or a sliding-window model whose padded length could
exceed its window (the window counts cache slots, padding included).

Each answer is cut at its first stop token (``model.generation_config.eos_token_id`` plus
``tokenizer.eos_token_id``): tokens a finished sequence receives while the rest of the batch
continues are never part of the answer.
"""

from __future__ import annotations

import copy

import torch

from ..data.samples import pad_batch
from ..errors import ClinicError


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the generation config's eos id(s) and the tokenizer's."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if int(item) not in ids:
                ids.append(int(item))
    return ids


def _cache_kwarg() -> str:
    """``generate``'s name for a ready cache: ``past_key_values`` before transformers 5.2x,
    ``cache`` after (the old name warns). The first of the library's own list in both."""
    from transformers.generation.utils import ALL_CACHE_NAMES

    return ALL_CACHE_NAMES[0]


#: below this many shared tokens the extra one-row forward is not worth its call overhead
MIN_SHARED_PREFIX = 8


def shared_prefix_length(model, prompt_ids: list[list[int]], max_new_tokens: int) -> int:
    """How many leading tokens all prompts share and :func:`generate` computes once (0: none).
    At least one token of every prompt is left out of it, for the first forward to feed."""
    import os

    n = min(len(os.path.commonprefix(prompt_ids)), min(len(ids) for ids in prompt_ids) - 1)
    window = getattr(model.config, "sliding_window", None) or getattr(
        getattr(model.config, "text_config", None), "sliding_window", None)
    if window and max(len(ids) for ids in prompt_ids) + max_new_tokens > window:
        return 0  # middle padding would change which keys a sliding window sees
    return n if n >= MIN_SHARED_PREFIX else 0


def _cut_at_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in stops:
            return tokens[:i]
    return tokens


def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    progress: bool = True,
    desc: str = "generate",
    share_prefix: bool = True,
) -> list[str]:
    """Greedy answers (new tokens only, special tokens skipped, stripped), in prompt order."""
    tokens = generate_ids(model, tokenizer, prompt_ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          progress=progress, desc=desc, share_prefix=share_prefix)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


def generate_ids(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    progress: bool = False,
    desc: str = "generate",
    share_prefix: bool = True,
) -> list[list[int]]:
    """Greedy new token ids of each prompt, cut at the first stop token, in prompt order."""
    if batch_size < 1:
        raise ClinicError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ClinicError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompt_ids:
        return []
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ClinicError("cannot generate from an empty prompt (0 tokens)")

    stops = stop_token_ids(model, tokenizer)
    gen_config = copy.deepcopy(model.generation_config)
    # Greedy, with every sampling knob cleared so that no warning about unused settings appears.
    for key, value in dict(
        do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, min_p=None,
        typical_p=None, repetition_penalty=None, no_repeat_ngram_size=None, max_length=None,
        min_new_tokens=None, min_length=None,
    ).items():
        if hasattr(gen_config, key) or value is not None:
            setattr(gen_config, key, value)
    gen_config.max_new_tokens = max_new_tokens
    gen_config.eos_token_id = stops or None
    gen_config.pad_token_id = tokenizer.pad_token_id  # what pad_batch pads with

    # Longest first: the first batch shows the worst-case memory at once, and similar lengths
    # share a batch. The sort is stable, so equal lengths keep their order.
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    outputs: list[list[int] | None] = [None] * len(prompt_ids)
    device = next(model.parameters()).device
    stop_set = set(stops)

    shared = shared_prefix_length(model, prompt_ids, max_new_tokens) if share_prefix else 0
    prefix = torch.tensor([prompt_ids[0][:shared]], device=device)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompt_ids), desc=desc, unit="prompt")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            prefix_cache = None
            if shared:
                prefix_cache = getattr(model(input_ids=prefix, use_cache=True), _cache_kwarg())
            for batch in batches:
                input_ids, mask = pad_batch(tokenizer, [prompt_ids[i][shared:] for i in batch], side="left",
                                            device=device)
                extra = {}
                if shared:
                    # [prefix | padding | rest]: the cache holds the prefix, generate feeds the rest
                    cache = copy.deepcopy(prefix_cache)
                    cache.batch_repeat_interleave(len(batch))
                    input_ids = torch.cat([prefix.expand(len(batch), -1), input_ids], dim=1)
                    mask = torch.cat([mask.new_ones(len(batch), shared), mask], dim=1)
                    extra[_cache_kwarg()] = cache
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_config, **extra)
                new = out[:, input_ids.shape[1]:].tolist()
                for row, index in enumerate(batch):
                    outputs[index] = _cut_at_stop(new[row], stop_set)
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return [o if o is not None else [] for o in outputs]
