"""TAR-lite: with the reference bug the update is plain SFT's; fixed, it is the hand formula."""

from __future__ import annotations

import pytest
import torch
from _alignment_support import (  # noqa: F401
    assert_close_lists,
    fixed_batch,
    hand_grads,
    harmful_batch,
    make_trainer,
    cpu_settings,
    trainable,
)

from clinic.errors import ClinicError
from clinic.methods.tar import TarLiteConfig


def test_bug_flag_gives_the_plain_sft_update(tmp_path):
    trainer = make_trainer("tar-lite", tmp_path)
    model = trainer.model
    batch = fixed_batch(trainer)
    params = trainable(model)
    before = [p.detach().clone() for p in params]
    expected = hand_grads(model, batch, params)
    trainer.training_step(model, batch)
    assert_close_lists([p.grad for p in params], expected, rtol=1e-5, atol=1e-8)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_bug_flag_trains_exactly_like_sft(tmp_path):
    tar = make_trainer("tar-lite", tmp_path, max_steps=3, batch_size=2)
    sft = make_trainer("sft", tmp_path, max_steps=3, batch_size=2)
    tar.train()
    sft.train()
    assert_close_lists(trainable(tar.model), trainable(sft.model), rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(p, torch.zeros_like(p)) for n, p in tar.model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("sign", ["plus", "minus"])
def test_fixed_update_equals_hand_computation(tmp_path, sign):
    trainer = make_trainer("tar-lite", tmp_path, options={"reproduce_bug": False, "harmful_sign": sign})
    model = trainer.model
    batch, harmful = fixed_batch(trainer), harmful_batch(trainer, (4, 5, 6, 7))
    trainer.next_batch = lambda name, batch_size=None: harmful
    params = trainable(model)
    g_f = hand_grads(model, batch, params)
    g_h = hand_grads(model, harmful, params)
    with torch.no_grad():
        for p, g in zip(params, g_h):
            p -= 0.01 * g
    g_f_attacked = hand_grads(model, batch, params)
    with torch.no_grad():
        for p, g in zip(params, g_h):
            p += 0.01 * g
    s = 1.0 if sign == "plus" else -1.0
    expected = [f + 2.0 * (s * h + fa) for f, h, fa in zip(g_f, g_h, g_f_attacked)]
    trainer.training_step(model, batch)
    assert_close_lists([p.grad for p in params], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ClinicError):
        TarLiteConfig(harmful_sign="sideways")
