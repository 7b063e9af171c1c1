"""Lisa: state switching, the proximal term's gradient, guide data replacing the user batch."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from _alignment_support import tiny_trainer

from clinic.data.samples import Sample
from clinic.errors import ClinicError
from clinic.methods.registry import get_method, method_config
from clinic.methods.lisa import ALIGN, FINETUNE, LISA_REFERENCES, LisaConfig, proximal_term


USER = [Sample(f"What is {i} plus {i}?", "", f"It is {2 * i}.") for i in range(8)]
GUIDE = [Sample(f"GUIDE how do I hurt {i}?", "", "GUIDE I cannot help with that.") for i in range(6)]


def make_trainer(tmp_path, max_steps=4, guide=GUIDE, callbacks=None, grad_accum=1, **options):
    trainer = tiny_trainer("lisa", "finetune", tmp_path, samples=USER, extra_data={"guide": guide} if guide else None,
                           options=options, seed=3, callbacks=callbacks, max_steps=max_steps, batch_size=2,
                           grad_accum=grad_accum, lr=1e-3, schedule="constant", logging_steps=1)
    return trainer, trainer.processing_class


class Snapshots(TrainerCallback):
    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = [p.detach().clone() for p in model.parameters() if p.requires_grad]


def test_registered_with_reference_defaults():
    cfg = method_config(get_method("lisa", "finetune"))
    assert (cfg.align_steps, cfg.finetune_steps, cfg.rho, cfg.prox_start) == (100, 900, 1.0, 0.1)
    assert cfg.stream_specs() == {"guide": ("refusals", None)}
    assert LISA_REFERENCES["booster"]["rho"] == 0.01 and LISA_REFERENCES["lisa"]["rho"] == 1.0
    for bad in ({"rho": -1.0}, {"align_steps": -1}, {"align_steps": 0, "finetune_steps": 0}, {"prox_start": 2.0}):
        with pytest.raises(ClinicError):
            LisaConfig(**bad)


def test_states_switch_at_the_right_steps_and_anchors_follow(tmp_path):
    snaps = Snapshots()
    trainer, _ = make_trainer(tmp_path, max_steps=12, align_steps=2, finetune_steps=3, rho=0.1, callbacks=[snaps])
    trainer.train()
    a, f = ALIGN, FINETUNE
    assert trainer.state_log == [a, a, f, f, f, a, a, f, f, f, a, a]
    # anchors: the last weights of each state before the last switch out of it
    for anchor, step in ((trainer.align_anchor, 7), (trainer.finetune_anchor, 10)):
        for x, y in zip(anchor, snaps.weights[step]):
            assert torch.equal(x, y)
    logged = [h["lisa_align_state"] for h in trainer.state.log_history if "lisa_align_state" in h]
    assert logged == [1.0 if s == a else 0.0 for s in trainer.state_log]
    # the proximal term starts after 10% of the 12 steps (step index > 1.2, i.e. from the 3rd step)
    prox_steps = [h["step"] for h in trainer.state.log_history if "lisa_proximal" in h]
    assert prox_steps == list(range(3, 13))


def test_switching_counts_optimizer_steps_with_accumulation(tmp_path):
    trainer, _ = make_trainer(tmp_path, max_steps=5, grad_accum=2, align_steps=1, finetune_steps=2, rho=0.0)
    trainer.train()
    assert trainer.state_log == [ALIGN, FINETUNE, FINETUNE, ALIGN, FINETUNE]


def test_without_guide_data_it_only_finetunes(tmp_path):
    trainer, _ = make_trainer(tmp_path, max_steps=3, guide=None, align_steps=1, finetune_steps=1)
    trainer.train()
    assert trainer.state_log == [FINETUNE] * 3


def test_proximal_gradient_is_rho_times_distance(tmp_path):
    rho = 0.37
    trainer, _ = make_trainer(tmp_path, rho=rho)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, anchor in zip(trainer._params, trainer.finetune_anchor):
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)  # move w away from both anchors
            anchor.add_(torch.randn(p.shape, generator=gen) * 0.1)
    assert trainer.lisa_state == ALIGN  # aligning: pulled towards the finetune state's weights
    trainer.model.zero_grad()
    value = trainer.proximal()
    value.backward()
    expected = sum(((p.detach() - a) ** 2).sum() for p, a in zip(trainer._params, trainer.finetune_anchor)) * rho / 2
    torch.testing.assert_close(value, expected)
    for p, anchor in zip(trainer._params, trainer.finetune_anchor):
        torch.testing.assert_close(p.grad, rho * (p.detach() - anchor))
    # and it is the autograd gradient of the plain formula
    w = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True)]
    anchors = [torch.randn(3, 2), torch.randn(4)]
    proximal_term(w, anchors, 2.0).backward()
    plain = [x.detach().clone().requires_grad_(True) for x in w]
    sum(((x - a) ** 2).sum() for x, a in zip(plain, anchors)).backward()
    for x, y in zip(w, plain):
        torch.testing.assert_close(x.grad, y.grad)


def test_align_state_discards_the_user_batch(tmp_path):
    trainer, tok = make_trainer(tmp_path, align_steps=1, finetune_steps=1, rho=0.0)
    seen = []
    original = trainer.lm_loss

    def recording(model, inputs):
        seen.append(tok.decode(inputs["input_ids"][0]))
        return original(model, inputs)

    trainer.lm_loss = recording
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    user_batch = next(iter(trainer.get_train_dataloader()))
    assert trainer.lisa_state == ALIGN
    trainer.training_step(trainer.model, dict(user_batch))
    assert "GUIDE" in seen[-1] and "plus" not in seen[-1]
    trainer.training_step(trainer.model, dict(user_batch))  # now finetune: the user batch is used
    assert trainer.state_log == [ALIGN, FINETUNE]
    assert "plus" in seen[-1] and "GUIDE" not in seen[-1]
