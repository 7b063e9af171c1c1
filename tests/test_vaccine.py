"""Vaccine: the perturbation has norm rho along the recorded gradient; the update is the
gradient under that perturbation."""

from __future__ import annotations

import pytest
import torch
from _alignment_support import assert_close_lists, fixed_batch, hand_grads, lm_loss, make_trainer, cpu_settings, trainable  # noqa: F401

from clinic.errors import ClinicError
from clinic.methods.shared import perturbation_from_grads
from clinic.methods.vaccine import VaccineConfig


def attention_output_grads(model, batch) -> list[torch.Tensor]:
    """d loss / d (attention output of each layer), with hooks written here (by attribute name)."""
    attn = [layer.self_attn for layer in model.get_base_model().model.layers]
    outputs = {}
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: outputs.__setitem__(i, out[0])) for i, m in enumerate(attn)]
    try:
        loss = lm_loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    return list(torch.autograd.grad(loss, [outputs[i] for i in range(len(attn))]))


def perturbed_grads(model, batch, eps: list[torch.Tensor], params) -> list[torch.Tensor]:
    attn = [layer.self_attn for layer in model.get_base_model().model.layers]
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: (out[0] + eps[i], *out[1:])) for i, m in enumerate(attn)]
    try:
        return hand_grads(model, batch, params)
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def trainer(tmp_path):
    t = make_trainer("vaccine", tmp_path, options={"rho": 2.0}, model_overrides={"num_hidden_layers": 3})
    t.record_perturbation = True
    return t


@pytest.mark.parametrize("fallback", [False, True])
def test_perturbation_has_norm_rho_and_gradient_direction(trainer, fallback):
    if fallback:  # the full-backward path used under reentrant checkpointing
        trainer.args.gradient_checkpointing_kwargs = {"use_reentrant": True}
    model = trainer.model
    batch = fixed_batch(trainer)
    g = attention_output_grads(model, batch)
    trainer.training_step(model, batch)
    eps = trainer.last_perturbation
    assert sorted(eps) == [0, 1, 2]
    total = torch.sqrt(sum(e.pow(2).sum() for e in eps.values()))
    assert total.item() == pytest.approx(2.0, rel=1e-5)
    G = torch.sqrt(sum(x.pow(2).sum() for x in g))
    for i, gi in enumerate(g):
        torch.testing.assert_close(eps[i], 2.0 * gi / (G + 1e-7), rtol=1e-4, atol=1e-8)
        cos = torch.nn.functional.cosine_similarity(eps[i].flatten(), gi.flatten(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-5)


def test_update_is_the_gradient_under_the_perturbation(trainer):
    model = trainer.model
    batch = fixed_batch(trainer)
    params = trainable(model)
    g = attention_output_grads(model, batch)
    G = torch.sqrt(sum(x.pow(2).sum() for x in g))
    expected = perturbed_grads(model, batch, [2.0 * gi / (G + 1e-7) for gi in g], params)
    clean = hand_grads(model, batch, params)
    trainer.training_step(model, batch)
    assert_close_lists([p.grad for p in params], expected, rtol=1e-4, atol=1e-7)
    # and the perturbation did change the update (else the test above proves nothing)
    assert any(not torch.allclose(c, e, rtol=1e-3, atol=1e-6) for c, e in zip(clean, expected))


def test_rho_zero_is_plain_sft_and_accumulated_grads_are_kept(tmp_path):
    trainer = make_trainer("vaccine", tmp_path, options={"rho": 0.0})
    model = trainer.model
    batch = fixed_batch(trainer)
    params = trainable(model)
    expected = hand_grads(model, batch, params)
    earlier = [torch.full_like(p, 0.5) for p in params]
    for p, e in zip(params, earlier):
        p.grad = e.clone()
    trainer.training_step(model, batch)
    assert_close_lists([p.grad for p in params], [e + x for e, x in zip(earlier, expected)], rtol=1e-5, atol=1e-6)


def test_perturbation_from_grads_zero_and_config_checks():
    assert perturbation_from_grads({}, 2.0) == {}
    eps = perturbation_from_grads({0: torch.zeros(2, 3)}, 2.0)
    assert torch.count_nonzero(eps[0]) == 0
    with pytest.raises(ClinicError):
        VaccineConfig(rho=-1)
