"""A stand-in for vLLM in tests (the real one needs a GPU): the same entry points clinic uses
(``LLM``, ``SamplingParams``, ``LoRARequest``), greedy decoding by transformers, every ``LLM(...)``
call recorded as JSON lines to ``$FAKE_VLLM_RECORD``. ``$FAKE_VLLM_DROP_ADAPTER=1`` makes it do what
a careless integration does: ignore the LoRA request and answer with the base model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop_token_ids: list | None = None
    skip_special_tokens: bool = True
    detokenize: bool = True


@dataclass
class _Completion:
    token_ids: list = field(default_factory=list)


@dataclass
class _Output:
    outputs: list


class LLM:
    def __init__(self, model: str, **kwargs):
        record = os.environ.get("FAKE_VLLM_RECORD")
        if record:
            with open(record, "a") as fh:
                fh.write(json.dumps({"model": model, **kwargs}) + "\n")
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype="float32")
        self.model.eval()

    def generate(self, prompts, params: SamplingParams, use_tqdm: bool = True, lora_request=None):
        import torch

        model = self.model
        if lora_request is not None and os.environ.get("FAKE_VLLM_DROP_ADAPTER") != "1":
            from peft import PeftModel

            model = PeftModel.from_pretrained(self.model, lora_request.lora_path).merge_and_unload()
        stops = set(params.stop_token_ids or [])
        out = []
        with torch.inference_mode():
            for p in prompts:
                ids = list(p["prompt_token_ids"])
                new = []
                for _ in range(params.max_tokens):
                    token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                    new.append(token)
                    if token in stops:
                        break
                out.append(_Output([_Completion(new)]))
        return out
