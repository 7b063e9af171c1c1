"""One instruction sample, and the token ids of samples as the models see them: a probe's ids
(:func:`probe_ids`, the Surgery reference's formatting) and a padded batch of id lists
(:func:`pad_batch`). Used by the sink analysis and by Surgery's probes alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .formatting import alpaca_prompt, user_text


@dataclass(frozen=True)
class Sample:
    instruction: str
    input: str
    output: str


def probe_ids(tokenizer, sample: Sample, max_length: int = 512, double_bos: bool = False) -> list[int]:
    """Token ids of one probe: ``[user: prompt, assistant: response]``, no system message.

    ``double_bos=True`` reproduces the reference's tokenization of the templated text *with*
    the tokenizer's special tokens (a second BOS on Llama 3).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": user_text(sample.instruction, sample.input)},
            {"role": "assistant", "content": sample.output},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=double_bos)["input_ids"]
    else:
        text = alpaca_prompt(sample.instruction, sample.input) + sample.output + (tokenizer.eos_token or "")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return list(ids[:max_length])


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right", device=None):
    """``(input_ids, attention_mask)`` of a list of id lists, padded on ``side``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)
