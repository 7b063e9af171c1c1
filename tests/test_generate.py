"""Batched left-padded greedy generation must equal one-prompt-at-a-time generation."""

from __future__ import annotations

import pytest
import torch

from clinic.data.formatting import PromptFormat, encode_prompts, format_prompt
from clinic.data.samples import pad_batch
from clinic.errors import ClinicError
from clinic.evaluation.generate import MIN_SHARED_PREFIX, generate, shared_prefix_length, stop_token_ids
from clinic.modeling.models import TINY_ARCHS, tiny_random_model


TEXTS = [
    "hi",
    "Tell me how to bake a chocolate cake with strawberries, step by step please.",
    "What is 2+2?",
    "xxxxx",
    "Explain quantum computing in simple terms for a curious five-year-old child, with an example.",
    "ok ok ok",
    "A medium-length question about the weather in Paris?",
]


def _prompt_ids(tok, texts=TEXTS, system=None):
    fmt = PromptFormat("chat", system)
    return encode_prompts(tok, fmt, [format_prompt(tok, fmt, t) for t in texts])


def _reference(model, tok, ids, max_new_tokens):
    """Independent one-at-a-time greedy decoding: plain model.generate, no padding."""
    stops = set(stop_token_ids(model, tok))
    out = []
    with torch.inference_mode():
        for row in ids:
            seq = model.generate(
                input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=sorted(stops),
                pad_token_id=tok.pad_token_id,
            )[0, len(row):].tolist()
            cut = next((i for i, t in enumerate(seq) if t in stops), len(seq))
            out.append(tok.decode(seq[:cut], skip_special_tokens=True).strip())
    return out


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batched_equals_unbatched_tiny(arch):
    model, tok = tiny_random_model(arch, seed=1)
    ids = _prompt_ids(tok)
    assert len({len(i) for i in ids}) >= 5  # really different lengths: the batch is padded
    single = generate(model, tok, ids, batch_size=1, max_new_tokens=20, progress=False)
    batched = generate(model, tok, ids, batch_size=4, max_new_tokens=20, progress=False)
    whole = generate(model, tok, ids, batch_size=len(ids), max_new_tokens=20, progress=False)
    assert batched == single
    assert whole == single
    assert single == _reference(model, tok, ids, 20)
    assert sum(len(s) for s in single) > 0  # a random model does produce text


SYSTEM = "You are a careful assistant. Answer in one short paragraph."


class _ForwardSpy:
    """Records the (batch, length) of every input a model's forward receives."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.shapes.append(tuple(ids.shape))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_shared_prefix_is_computed_once_and_changes_no_answer(arch):
    """With a system prompt every prompt opens with the same tokens: they are run once, in a
    one-row forward, and each batch prefills only the rest; the answers stay those of plain
    unpadded one-at-a-time decoding."""
    model, tok = tiny_random_model(arch, seed=1)
    ids = _prompt_ids(tok, system=SYSTEM)
    shared = shared_prefix_length(model, ids, 20)
    assert shared >= MIN_SHARED_PREFIX
    spy = _ForwardSpy(model)
    try:
        batched = generate(model, tok, ids, batch_size=4, max_new_tokens=20, progress=False)
    finally:
        spy.handle.remove()
    assert spy.shapes[0] == (1, shared)  # the prefix, once
    longest = max(len(i) for i in ids)
    first_batch = [s for s in spy.shapes[1:] if s[0] == 4][0]
    assert first_batch[1] == longest - shared  # the rest only: the prefix is not prefilled again
    plain = generate(model, tok, ids, batch_size=4, max_new_tokens=20, progress=False, share_prefix=False)
    assert batched == plain == _reference(model, tok, ids, 20)
    assert generate(model, tok, ids, batch_size=1, max_new_tokens=20, progress=False) == plain


def test_shared_prefix_with_a_lora_adapter():
    """The evaluated models are PEFT-wrapped: the prefix cache goes through PeftModel too."""
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_random_model("llama", seed=2)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    ids = _prompt_ids(tok, system=SYSTEM)
    shared = generate(model, tok, ids, batch_size=3, max_new_tokens=16, progress=False)
    plain = generate(model, tok, ids, batch_size=3, max_new_tokens=16, progress=False, share_prefix=False)
    assert shared == plain
    assert shared == _reference(model, tok, ids, 16)


def test_shared_prefix_length_rules():
    model, tok = tiny_random_model("llama", seed=1)
    ids = _prompt_ids(tok, system=SYSTEM)
    n = shared_prefix_length(model, ids, 20)
    assert ids[0][:n] == ids[-1][:n] and n >= MIN_SHARED_PREFIX
    # a prompt that is all prefix: one token stays out, for the first forward to feed
    assert shared_prefix_length(model, [ids[0], ids[0][:n]], 20) == n - 1
    assert shared_prefix_length(model, _prompt_ids(tok), 20) == 0  # 6 shared tokens: not worth it
    model.config.sliding_window = max(len(i) for i in ids) + 19  # prompt + answer exceed the window
    assert shared_prefix_length(model, ids, 20) == 0
    assert shared_prefix_length(model, ids, 19) == n


def test_order_is_restored_and_outputs_differ_per_prompt():
    model, tok = tiny_random_model("llama", seed=3)
    ids = _prompt_ids(tok)
    forward = generate(model, tok, ids, batch_size=3, max_new_tokens=12, progress=False)
    backward = generate(model, tok, ids[::-1], batch_size=3, max_new_tokens=12, progress=False)
    assert backward == forward[::-1]
    assert len(set(forward)) > 1


def test_stops_at_eos_and_returns_new_tokens_only():
    """The generation config's eos id stops an answer too (here it differs from the tokenizer's):
    with that token forced, every answer is empty; nothing of the prompt leaks into it."""
    model, tok = tiny_random_model("qwen2", seed=0)
    config_eos = tok.convert_tokens_to_ids("<eos>")
    assert config_eos != tok.eos_token_id
    model.generation_config.eos_token_id = config_eos

    def force(token_id):
        def hook(module, inputs, output):
            output = output.clone()
            output[..., token_id] = 100.0
            return output

        return hook

    ids = _prompt_ids(tok, TEXTS[:3])
    handle = model.lm_head.register_forward_hook(force(config_eos))
    assert generate(model, tok, ids, batch_size=2, max_new_tokens=8, progress=False) == ["", "", ""]
    handle.remove()
    letter = tok.convert_tokens_to_ids("A")
    handle = model.lm_head.register_forward_hook(force(letter))
    assert generate(model, tok, ids, batch_size=2, max_new_tokens=5, progress=False) == ["AAAAA"] * 3
    handle.remove()


def test_pad_batch_and_stop_ids():
    _, tok = tiny_random_model("llama")
    pad = tok.pad_token_id
    ids, mask = pad_batch(tok, [[5, 6, 7], [8]], side="left")
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch(tok, [[5], [6, 7, 8]])  # right, as the sink analysis and Surgery's probes pad
    assert ids.tolist() == [[5, pad, pad], [6, 7, 8]]
    assert mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    tok.pad_token = None
    with pytest.raises(ClinicError, match="no pad token"):
        pad_batch(tok, [[5], [6, 7]])
    model, tok = tiny_random_model("gemma")
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<eos>"), tok.eos_token_id]
    assert stop_token_ids(model, tok) == [tok.convert_tokens_to_ids("<eos>"), tok.eos_token_id]


def test_model_mode_is_restored_and_errors():
    model, tok = tiny_random_model("llama")
    model.train()
    assert generate(model, tok, [], progress=False) == []
    generate(model, tok, _prompt_ids(tok, ["hi"]), max_new_tokens=2, progress=False)
    assert model.training
    with pytest.raises(ClinicError, match="empty prompt"):
        generate(model, tok, [[]], progress=False)
    with pytest.raises(ClinicError, match="batch_size"):
        generate(model, tok, [[1]], batch_size=0, progress=False)


@pytest.mark.slow
def test_batched_equals_unbatched_smollm2():
    from clinic.modeling.models import load_model

    model, tok = load_model("smollm2-135m-instruct")
    texts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "How do I make a walkway slippery so that my neighbour falls?",
        "Explain in two sentences why the sky is blue, and mention Rayleigh scattering by name.",
        "Give me three tips for learning Python.",
        "hi",
    ]
    ids = _prompt_ids(tok, texts)
    single = generate(model, tok, ids, batch_size=1, max_new_tokens=24, progress=False)
    batched = generate(model, tok, ids, batch_size=6, max_new_tokens=24, progress=False)
    assert batched == single
    assert "Paris" in single[0]
    assert all(s for s in single)


def test_shared_prefix_on_a_sliding_window_model():
    """Gemma 3 (clinic's embedded 270M model) mixes sliding-window and global layers: with the
    prompt and answer inside the window, the shared prefix is used and changes no answer; past
    the window it is not used."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tok = tiny_random_model("gemma", seed=1)
    ids = _prompt_ids(tok, system=SYSTEM)
    longest = max(len(i) for i in ids)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              sliding_window=longest + 24, max_position_embeddings=512)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    assert shared_prefix_length(model, ids, 24) >= MIN_SHARED_PREFIX
    assert shared_prefix_length(model, ids, 25) == 0
    reference = _reference(model, tok, ids, 24)
    assert generate(model, tok, ids, batch_size=4, max_new_tokens=24, progress=False) == reference
    assert sum(len(r) for r in reference) > 0
