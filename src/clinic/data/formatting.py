"""Turn (instruction, input, output) samples into prompts and training rows.

Two prompt styles:

- ``chat`` (default): the tokenizer's chat template, with an optional system prompt. Templates
  without a system role (Gemma) get the system text prepended to the first user turn, as the
  Surgery reference does.
- ``alpaca``: the Alpaca template of the Vaccine / T-Vaccine / Booster / Lisa reference code.

Training rows are TRL *prompt-completion* rows; TRL's SFTTrainer tokenizes them, masks the
prompt (labels only on response tokens) and adds the end token once: for ``chat`` the template's
end-of-turn token, for ``alpaca`` ``eos_token`` (appended only when absent).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ClinicError

PROMPT_STYLES = ("chat", "alpaca")

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are rendered: ``style`` is ``chat`` or ``alpaca``; ``system_prompt`` is
    used by ``chat`` only (``None``: the template's own default, if any)."""

    style: str = "chat"
    system_prompt: str | None = None

    def __post_init__(self):
        if self.style not in PROMPT_STYLES:
            raise ClinicError(f"unknown prompt style {self.style!r}; choose one of {', '.join(PROMPT_STYLES)}")


def user_text(instruction: str, input_text: str = "") -> str:
    """The user turn of the chat style: instruction, a blank line, then the input (if any)."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def supports_system_role(tokenizer) -> bool:
    """Whether the chat template renders a system message (Gemma's raise on it)."""
    cached = getattr(tokenizer, "_clinic_system_role", None)
    if cached is not None:
        return cached
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "hi"}], tokenize=False
        )
        ok = "SYSTEM-PROBE" in rendered
    except Exception:  # noqa: BLE001  jinja raise_exception and friends
        ok = False
    tokenizer._clinic_system_role = ok
    return ok


def chat_messages(tokenizer, fmt: PromptFormat, instruction: str, input_text: str = "") -> list[dict]:
    """The prompt messages (system + user) for the chat style."""
    text = user_text(instruction, input_text)
    if fmt.system_prompt is None:
        return [{"role": "user", "content": text}]
    if supports_system_role(tokenizer):
        return [{"role": "system", "content": fmt.system_prompt}, {"role": "user", "content": text}]
    return [{"role": "user", "content": f"{fmt.system_prompt}\n\n{text}"}]


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ClinicError("the tokenizer has no chat template; use --prompt-style alpaca for this (base) model")


def format_prompt(tokenizer, fmt: PromptFormat, instruction: str, input_text: str = "") -> str:
    """The text a model is given at generation time (ends where the response starts)."""
    if fmt.style == "alpaca":
        return alpaca_prompt(instruction, input_text)
    _require_template(tokenizer)
    return tokenizer.apply_chat_template(
        chat_messages(tokenizer, fmt, instruction, input_text), tokenize=False, add_generation_prompt=True
    )


def encode_prompts(tokenizer, fmt: PromptFormat, prompts: list[str]) -> list[list[int]]:
    """Token ids of already-formatted prompts, with special tokens as training sees them:
    the chat template writes its own (BOS included), the Alpaca text gets the tokenizer's."""
    add_special = fmt.style == "alpaca"
    return [tokenizer(p, add_special_tokens=add_special)["input_ids"] for p in prompts]


def training_row(tokenizer, fmt: PromptFormat, instruction: str, input_text: str, output: str) -> dict:
    """A TRL prompt-completion row for one sample."""
    if fmt.style == "alpaca":
        return {"prompt": alpaca_prompt(instruction, input_text), "completion": output}
    _require_template(tokenizer)
    return {
        "prompt": chat_messages(tokenizer, fmt, instruction, input_text),
        "completion": [{"role": "assistant", "content": output}],
    }
