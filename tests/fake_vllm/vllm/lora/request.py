"""The fake vLLM's LoRARequest (tests/fake_vllm/vllm)."""

from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str
