"""RepNoise: every loss term against an independent computation; pairing and masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _alignment_support import (  # noqa: F401
    HARMFUL_OTHER,
    fixed_batch,
    harmful_batch,
    lm_loss,
    make_trainer,
    cpu_settings,
    trainable,
)

from clinic.errors import ClinicError
from clinic.methods.repnoise import RepNoiseConfig, difference_masks, mmd, prompt_key, repnoise_terms


def reference_mmd(source, target, kernel_mul=2.0, kernel_num=5):
    """The RepNoise code's MMD, written out with the [n, n, d] difference tensor."""
    n = source.shape[0]
    total = torch.cat([source, target], 0)
    m = total.shape[0]
    l2 = ((total.unsqueeze(0) - total.unsqueeze(1)) ** 2).sum(2)
    bandwidth = l2.detach().sum() / (m * m - m) / kernel_mul ** (kernel_num // 2)
    k = sum(torch.exp(-l2 / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    return torch.mean(k[:n, :n] + k[n:, n:] - k[:n, n:] - k[n:, :n])


def test_mmd_matches_the_reference_formula():
    torch.manual_seed(0)
    x, y = torch.randn(3, 40, dtype=torch.float64), torch.randn(3, 40, dtype=torch.float64) * 2 + 1
    assert mmd(x, y).item() == pytest.approx(reference_mmd(x, y).item(), rel=1e-5)
    assert mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert mmd(x, y).item() > mmd(x, torch.randn(3, 40, dtype=torch.float64)).item()


def shifted_ce(logits, ids, mask):
    """Next-token CE at the masked positions, written as a loop."""
    losses = []
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                losses.append(F.cross_entropy(logits[b, t - 1][None].float(), ids[b, t][None]))
    return torch.stack(losses).mean()


def independent_terms(model, h, s, mask_h, mask_s, alpha, beta):
    base = model.get_base_model()
    layers = base.model.layers
    mlp_out = {}
    handles = [layer.mlp.register_forward_hook(lambda m, a, o, i=i: mlp_out.__setitem__(i, o)) for i, layer in enumerate(layers)]
    out = model(input_ids=h["input_ids"], attention_mask=h["attention_mask"], output_hidden_states=True, use_cache=False)
    for handle in handles:
        handle.remove()
    n = len(layers)
    noise = 0
    for i in range(n):
        rep = mlp_out[i] * mask_h.unsqueeze(-1)
        gauss = torch.randn_like(rep) * mask_h.unsqueeze(-1)
        noise = noise + reference_mmd(rep.reshape(rep.shape[0], -1), gauss.reshape(rep.shape[0], -1))
    noise = noise / n
    ce_final = shifted_ce(out.logits, h["input_ids"], mask_h)
    # logit lens on the pre-norm residual stream: HF's hidden_states[:-1] are pre-norm; the last
    # entry is already normed, so lens(h_L) is the final logits themselves
    lens = [shifted_ce(base.lm_head(base.model.norm(hs)), h["input_ids"], mask_h) for hs in out.hidden_states[:-1]]
    lens.append(shifted_ce(base.lm_head(out.hidden_states[-1]), h["input_ids"], mask_h))
    harm = (ce_final + sum(lens)) / (n + 1) + 1
    out_s = model(input_ids=s["input_ids"], attention_mask=s["attention_mask"], use_cache=False)
    keep = shifted_ce(out_s.logits, s["input_ids"], mask_s)
    return {"keep": keep, "harm": harm, "noise": noise, "ce_final": ce_final,
            "loss": keep + beta * noise - alpha * torch.log(harm)}


@pytest.mark.parametrize("paired", [True, False])
def test_loss_terms_match_an_independent_computation(tmp_path, paired):
    trainer = make_trainer("repnoise", tmp_path, options={"paired": paired}, model_overrides={"num_hidden_layers": 3})
    model = trainer.model
    s = fixed_batch(trainer, (0, 1, 2))
    h = harmful_batch(trainer, (5, 6, 7))  # other prompts: the unpaired case
    if paired:
        mask_h, mask_s = h["labels"] != -100, s["labels"] != -100
    else:
        h, s, mask_h, mask_s = difference_masks(h, s, trainer.processing_class.pad_token_id)
    torch.manual_seed(3)
    ours = repnoise_terms(model, h, s, mask_h, mask_s, alpha=0.1, beta=0.001)
    torch.manual_seed(3)
    ref = independent_terms(model, h, s, mask_h, mask_s, alpha=0.1, beta=0.001)
    for name in ("keep", "harm", "noise", "ce_final", "loss"):
        assert float(ours[name]) == pytest.approx(float(ref[name]), rel=1e-4), name
    if paired:  # answer-only masks: keep and CE_final are the plain HF losses
        assert float(ours["keep"]) == pytest.approx(float(lm_loss(model, s)), rel=1e-5)
        assert float(ours["ce_final"]) == pytest.approx(float(lm_loss(model, h)), rel=1e-5)
    # the gradient of the step is the gradient of that loss
    params = trainable(model)
    torch.manual_seed(3)
    expected = torch.autograd.grad(independent_terms(model, h, s, mask_h, mask_s, 0.1, 0.001)["loss"], params)
    torch.manual_seed(3)
    trainer.harmful_batch = lambda inputs: (h, s, mask_h, mask_s)
    trainer.training_step(model, s)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)


def test_difference_mask_pads_and_keeps_real_tokens_only():
    h = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1]])}
    s = {"input_ids": torch.tensor([[1, 2, 9]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    hp, sp, mh, ms = difference_masks(h, s, pad_id=0)
    assert sp["input_ids"].tolist() == [[1, 2, 9, 0, 0]] and sp["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]
    assert mh.tolist() == [[False, False, True, True, True]]
    assert ms.tolist() == [[False, False, True, False, False]]


def test_paired_batches_share_prompts_when_the_data_allows(tmp_path):
    trainer = make_trainer("repnoise", tmp_path)  # HARMFUL shares REFUSALS' prompts
    assert trainer.n_shared_prompts == 8
    s = fixed_batch(trainer, (4, 1, 6))
    h, s2, mask_h, mask_s = trainer.harmful_batch(s)
    for row in range(3):
        assert prompt_key(h["input_ids"][row].tolist(), h["labels"][row].tolist()) == \
            prompt_key(s["input_ids"][row].tolist(), s["labels"][row].tolist())
    assert torch.equal(mask_h, h["labels"] != -100) and torch.equal(mask_s, s["labels"] != -100)
    # no shared prompt: independent draws, answer-only masks
    other = make_trainer("repnoise", tmp_path, harmful=HARMFUL_OTHER)
    assert other.n_shared_prompts == 0
    h, _, mask_h, _ = other.harmful_batch(s)
    assert h["input_ids"].shape[0] == 3 and torch.equal(mask_h, h["labels"] != -100)


def test_trains_and_config_checks(tmp_path):
    trainer = make_trainer("repnoise", tmp_path, options={"noise_on": "hidden"}, max_steps=2, batch_size=2)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "repnoise/noise" in h]
    assert logged and all(h["repnoise/harm"] > 1 for h in logged)
    with pytest.raises(ClinicError):
        RepNoiseConfig(noise_on="attn")
    with pytest.raises(ClinicError):
        RepNoiseConfig(alpha=-1)
