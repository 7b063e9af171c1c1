"""Model loading, tiny architectures, pad tokens and the LoRA hand-off."""

from __future__ import annotations

import pytest
import torch

from clinic.errors import ClinicError
from clinic.modeling.hooks import attention_modules, decoder_layers
from clinic.modeling.models import TINY_ARCHS, attach_lora, load_model, merge_adapter, tiny_random_model
from clinic.modeling.lora import LoraFields


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_and_structural_layers(arch):
    model, tok = tiny_random_model(arch)
    assert model.config.model_type == arch
    assert len(decoder_layers(model)) == 2 and len(attention_modules(model)) == 2
    peft_model = attach_lora(model, LoraFields(lora_r=4, lora_alpha=8))
    assert len(decoder_layers(peft_model)) == 2  # found through the PEFT wrapper
    ids = tok("hello", return_tensors="pt")
    assert peft_model(**ids).logits.shape[-1] == len(tok)


def test_same_seed_same_weights():
    a, _ = tiny_random_model("qwen2", seed=1)
    b, _ = tiny_random_model("qwen2", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_pad_token_set_without_resizing():
    model, tok = load_model("tiny-random-llama")
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_lora_save_merge_roundtrip(tmp_path):
    model, tok = tiny_random_model("llama")
    peft_model = attach_lora(model, LoraFields(lora_r=4, lora_alpha=8))
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = tok("some text", return_tensors="pt")
    expected = peft_model(**ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    base, _ = tiny_random_model("llama")
    merged = merge_adapter(base, tmp_path / "adapter")
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(merged(**ids).logits, expected, atol=1e-5, rtol=1e-4)


def test_bad_model_references(tmp_path):
    with pytest.raises(ClinicError, match="not found"):
        load_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClinicError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ClinicError, match="unknown tiny architecture"):
        load_model("tiny-random-gpt9")
    with pytest.raises(ClinicError, match="holds no LoRA adapter"):
        merge_adapter(tiny_random_model("llama")[0], tmp_path / "empty")


def test_two_runners_on_a_fresh_cache_convert_a_gguf_once(tmp_path, monkeypatch):
    """The GGUF-to-safetensors cache is locked: two runners that start on an empty cache convert
    once, and both load the one folder."""
    import threading
    import time

    import clinic.modeling.models as models

    monkeypatch.setenv("CLINIC_CACHE_DIR", str(tmp_path / "cache"))
    entry = models.PackagedGGUF("fake", "fake_pkg", "fake/hub", "chat")
    conversions = []

    def convert(entry, target):
        conversions.append(threading.get_ident())
        time.sleep(0.5)  # a real conversion takes seconds: the other runner arrives meanwhile
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        return target

    monkeypatch.setattr(models, "_convert_locked", convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(models._convert_gguf(entry))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(conversions) == 1 and len(results) == 2 and results[0] == results[1]
