"""Booster: the update equals g_a + lambda (g_h - g_h') computed by hand; weights restored."""

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
from clinic.methods.booster import BoosterConfig


def by_hand(model, batch, harmful, lam, alpha):
    params = trainable(model)
    g_a = hand_grads(model, batch, params)
    g_h = hand_grads(model, harmful, params)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in g_h))
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, g_h):
            p -= alpha * g / (norm + 1e-7)
    g_h2 = hand_grads(model, harmful, params)
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    return [a + lam * (h - h2) for a, h, h2 in zip(g_a, g_h, g_h2)], g_a


@pytest.mark.parametrize("lam,alpha", [(5.0, 0.1), (2.0, 0.5)])
def test_update_equals_hand_computation(tmp_path, lam, alpha):
    trainer = make_trainer("booster", tmp_path, options={"lam": lam, "alpha": alpha})
    model = trainer.model
    batch, harmful = fixed_batch(trainer), harmful_batch(trainer, (4, 5, 6, 7))
    trainer.next_batch = lambda name, batch_size=None: harmful
    expected, g_a = by_hand(model, batch, harmful, lam, alpha)
    before = [p.detach().clone() for p in trainable(model)]
    trainer.training_step(model, batch)
    params = trainable(model)
    assert_close_lists([p.grad for p in params], expected, rtol=1e-4, atol=1e-7)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # w restored exactly
    # the regulariser is not negligible here, so the comparison has teeth
    assert any(not torch.allclose(e, a, rtol=1e-3, atol=1e-6) for e, a in zip(expected, g_a))


def test_lambda_zero_is_sft_and_accumulated_grads_are_kept(tmp_path):
    trainer = make_trainer("booster", tmp_path, options={"lam": 0.0})
    model = trainer.model
    batch = fixed_batch(trainer)
    params = trainable(model)
    g_a = hand_grads(model, batch, params)
    for p in params:
        p.grad = torch.ones_like(p)
    trainer.training_step(model, batch)
    assert_close_lists([p.grad for p in params], [g + 1 for g in g_a], rtol=1e-5, atol=1e-6)


def test_trains_with_gradient_checkpointing_and_perturb_aware(tmp_path):
    trainer = make_trainer("booster", tmp_path, options={"perturb_aware": True, "harmful_batch_size": 2},
                           max_steps=2, batch_size=2, gradient_checkpointing=True)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "booster/harmful_loss" in h]
    assert len(logged) == 2
    with pytest.raises(ClinicError):
        BoosterConfig(harmful_batch_size=-1)
