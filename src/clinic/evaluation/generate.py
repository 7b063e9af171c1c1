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
) -> list[str]:
    """Greedy answers (new tokens only, special tokens skipped, stripped), in prompt order."""
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
    outputs: list[str | None] = [None] * len(prompt_ids)
    device = next(model.parameters()).device
    stop_set = set(stops)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompt_ids), desc=desc, unit="prompt")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                input_ids, mask = pad_batch(tokenizer, [prompt_ids[i] for i in batch], side="left", device=device)
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_config)
                new = out[:, input_ids.shape[1]:].tolist()
                for row, index in enumerate(batch):
                    tokens = _cut_at_stop(new[row], stop_set)
                    outputs[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return [o if o is not None else "" for o in outputs]
