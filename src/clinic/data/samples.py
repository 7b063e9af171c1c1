"""One instruction sample, and the token ids of samples as the models see them: a probe's ids
(:func:`probe_ids`, the Surgery reference's formatting) and a padded batch of id lists
(:func:`pad_batch`, on ``tokenizer.pad``). Used by the sink analysis, Surgery's probes and
batched generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ClinicError
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


def pad_batch(tokenizer, sequences: Sequence[Sequence[int]], side: str = "right", device=None):
    """``(input_ids, attention_mask)`` of a list of id lists, padded on ``side`` with the
    tokenizer's pad token by ``tokenizer.pad``. clinic's loaders give every tokenizer a pad token
    (:func:`clinic.modeling.models.prepare_tokenizer`); one without is refused rather than padded with a
    guessed id."""
    if tokenizer.pad_token_id is None:
        raise ClinicError("the tokenizer has no pad token: cannot pad a batch (clinic.modeling.models.prepare_tokenizer sets one)")
    batch = tokenizer.pad({"input_ids": [list(seq) for seq in sequences]}, padding=True, padding_side=side,
                          return_attention_mask=True, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)
