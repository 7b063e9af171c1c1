"""T-Vaccine: layer scores are harmful-gradient norms; sampling frequencies follow them; only
the active layers are perturbed and trained; inactive layers store no activations."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from _alignment_support import HARMFUL, HARMFUL_OTHER, assert_close_lists, fixed_batch, harmful_batch, lm_loss, make_trainer, cpu_settings  # noqa: F401
from scipy.stats import chisquare

from clinic.errors import ClinicError
from clinic.methods.tvaccine import TVaccineConfig, inclusion_probabilities, sample_layers


def layers_of(model):
    return model.get_base_model().model.layers


def lora_params(module):
    return [p for n, p in module.named_parameters() if "lora_" in n]


def force_active(trainer, active: list[int]):
    """Make the next step use ``active`` (scores set by hand, no rescoring at step 0)."""
    n = trainer.num_layers
    trainer.probabilities = [1.0 if i in active else 0.0 for i in range(n)]
    trainer._scored_at = trainer.state.global_step
    trainer.active = list(active)
    trainer._sampled_at = trainer.state.global_step


# -- sampling ---------------------------------------------------------------------------------


def test_single_layer_frequencies_match_probabilities():
    p = [0.05, 0.15, 0.3, 0.5]
    gen = torch.Generator().manual_seed(0)
    draws = 10000
    counts = Counter(sample_layers(p, 1, gen)[0] for _ in range(draws))
    observed = [counts[i] for i in range(4)]
    assert chisquare(observed, [x * draws for x in p]).pvalue > 1e-3
    # the test has power: a uniform sampler would fail it
    assert chisquare(observed, [draws / 4] * 4).pvalue < 1e-6


def test_set_inclusion_matches_successive_sampling_without_replacement():
    p = [0.1, 0.2, 0.3, 0.4]
    gen = torch.Generator().manual_seed(1)
    draws = 10000
    counts = Counter()
    for _ in range(draws):
        chosen = sample_layers(p, 2, gen)
        assert len(set(chosen)) == 2 and chosen == sorted(chosen)
        counts.update(chosen)
    expected = inclusion_probabilities(p, 2)
    assert sum(expected) == pytest.approx(2.0)
    for i in range(4):
        assert counts[i] / draws == pytest.approx(expected[i], abs=0.02)
    # clamping and a zero-score layer
    assert sample_layers([0.0, 1.0, 0.0], 5, gen) == [0, 1, 2]
    assert sample_layers([0.0, 1.0, 0.0], 1, gen) == [1]


def test_scores_are_harmful_gradient_norms_and_seeded(tmp_path):
    trainer = make_trainer("tvaccine", tmp_path, options={"active_layers": 2}, model_overrides={"num_hidden_layers": 4})
    model = trainer.model
    probe = harmful_batch(trainer, (3,))
    # independent: gradient of the harmful loss w.r.t. each attention output
    outputs = {}
    handles = [layer.self_attn.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0]))
               for i, layer in enumerate(layers_of(model))]
    loss = lm_loss(model, probe)
    for h in handles:
        h.remove()
    norms = [g.norm().item() for g in torch.autograd.grad(loss, [outputs[i] for i in range(4)])]
    p = trainer.score_layers(model, probe)
    assert trainer.grad_norms == pytest.approx(norms, rel=1e-5)
    assert p == pytest.approx([n / sum(norms) for n in norms], rel=1e-5)
    assert all(param.grad is None for param in model.parameters())  # scoring leaves .grad alone
    # same seed, same sequence of active sets
    other = make_trainer("tvaccine", tmp_path, options={"active_layers": 2}, model_overrides={"num_hidden_layers": 4})
    other.probabilities = trainer.probabilities
    assert [trainer.resample() for _ in range(5)] == [other.resample() for _ in range(5)]



def attention_output_grad_norms(model, batch, n_layers):
    """||d loss(batch) / d attention output of layer l|| for every l, by hooks of the test's own."""
    outputs = {}
    handles = [layer.self_attn.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0]))
               for i, layer in enumerate(layers_of(model))]
    try:
        loss = lm_loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    return [g.norm().item() for g in torch.autograd.grad(loss, [outputs[i] for i in range(n_layers)])]


def test_the_trainers_own_step_scores_layers_on_a_harmful_sample(tmp_path):
    """The training step itself (not a test call of score_layers) scores on the harmful stream:
    a harmful pool of one sample unlike any alignment sample fixes what the scores must be."""
    trainer = make_trainer("tvaccine", tmp_path, options={"active_layers": 2, "harmful_size": 1},
                           model_overrides={"num_hidden_layers": 4}, harmful=HARMFUL_OTHER[3:4])
    model = trainer.model
    align = fixed_batch(trainer)
    on_harmful = attention_output_grad_norms(model, harmful_batch(trainer, (0,)), 4)
    on_align = attention_output_grad_norms(model, align, 4)
    assert on_harmful != pytest.approx(on_align, rel=1e-3)  # the two are told apart
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, align)  # step 0: scores, samples, trains
    assert trainer.grad_norms == pytest.approx(on_harmful, rel=1e-5)
    assert trainer.probabilities == pytest.approx([n / sum(on_harmful) for n in on_harmful], rel=1e-5)


def test_the_trainers_own_steps_sample_layers_with_its_probabilities(tmp_path):
    """Over many steps of the trainer (resampling every step), the layer it actually perturbs
    follows its probabilities, not a uniform draw (seeded: the same counts every run)."""
    trainer = make_trainer("tvaccine", tmp_path, options={"active_layers": 1, "resample_every": 1, "score_every": 10**6},
                           model_overrides={"num_hidden_layers": 4})
    trainer.record_perturbation = True
    p = [0.7, 0.05, 0.15, 0.1]
    trainer.probabilities = list(p)  # scored "at step 0" by hand; scoring is tested above
    trainer._scored_at = 0
    batch = fixed_batch(trainer, (0, 1))
    steps = 120
    counts = Counter()
    for step in range(steps):
        trainer.state.global_step = step
        trainer.model.zero_grad(set_to_none=True)
        trainer.training_step(trainer.model, batch)
        (layer,) = trainer.last_perturbation  # the layer this step really perturbed
        counts[layer] += 1
    observed = [counts[i] for i in range(4)]
    assert chisquare(observed, [x * steps for x in p]).pvalue > 1e-3
    assert chisquare(observed, [steps / 4] * 4).pvalue < 1e-6  # a uniform sampler fails


# -- freezing, perturbation, memory ------------------------------------------------------------


class SavedBytes:
    """Bytes saved for backward while each decoder layer's forward runs (outside checkpoints)."""

    def __init__(self, layers):
        self.current = None
        self.bytes = Counter()
        self.handles = []
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "current", i)))
            self.handles.append(layer.register_forward_hook(lambda m, a, o: setattr(self, "current", None)))

    def pack(self, t):
        if self.current is not None:
            self.bytes[self.current] += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        for h in self.handles:
            h.remove()


def run_step(trainer, batch):
    with SavedBytes(layers_of(trainer.model)) as saved:
        trainer.training_step(trainer.model, batch)
    return saved.bytes


@pytest.mark.parametrize("freeze", ["layers", "attention"])
def test_inactive_layers_get_no_gradient_and_store_no_activations(tmp_path, freeze):
    trainer = make_trainer("tvaccine", tmp_path, options={"active_layers": 1, "rho": 3.0, "freeze": freeze},
                           model_overrides={"num_hidden_layers": 4})
    trainer.record_perturbation = True
    model = trainer.model
    batch = fixed_batch(trainer)
    force_active(trainer, [1])
    saved = run_step(trainer, batch)
    layers = layers_of(model)
    # gradients: the active layer trains; inactive ones are frozen (whole layer or attention only)
    assert all(p.grad is not None for p in lora_params(layers[1]))
    assert all(p.grad.abs().sum() > 0 for n, p in layers[1].named_parameters() if "lora_B" in n)  # lora_A's is 0 at init
    for i in (0, 2, 3):
        assert all(p.grad is None for p in lora_params(layers[i].self_attn))
        mlp_grads = [p.grad for p in lora_params(layers[i].mlp)]
        if freeze == "layers":
            assert all(g is None for g in mlp_grads)
        else:
            assert all(g is not None for g in mlp_grads)
    # perturbation only on the active layer, norm rho
    assert list(trainer.last_perturbation) == [1]
    assert trainer.last_perturbation[1].norm().item() == pytest.approx(3.0, rel=1e-5)
    # memory: checkpointed layers keep only their input hidden state (one per pass); layer 0
    # (before the active one: no gradient flows there) keeps nothing at all
    hidden = batch["input_ids"].numel() * model.config.hidden_size * 4
    assert saved[1] > 8 * hidden
    assert 0 < saved[2] <= 2 * hidden and 0 < saved[3] <= 2 * hidden
    assert saved[0] == 0 if freeze == "layers" else saved[0] <= 2 * hidden
    grads_ckpt = [None if p.grad is None else p.grad.clone() for p in trainer._trainable]

    # control: without checkpointing they do store activations, and the gradients are the same
    trainer.restore_model()
    trainer.method_config.checkpoint_inactive = False
    model.zero_grad(set_to_none=True)
    saved_plain = run_step(trainer, batch)
    assert saved_plain[2] > 8 * hidden and saved_plain[3] > 8 * hidden
    assert saved_plain[1] == pytest.approx(saved[1], rel=0.05)
    grads_plain = [None if p.grad is None else p.grad.clone() for p in trainer._trainable]
    assert [g is None for g in grads_ckpt] == [g is None for g in grads_plain]
    assert_close_lists([g for g in grads_ckpt if g is not None], [g for g in grads_plain if g is not None],
                       rtol=1e-4, atol=1e-7)


def test_reference_uncheckpointed_rule(tmp_path):
    trainer = make_trainer("tvaccine", tmp_path, options={"uncheckpointed": "reference"})
    trainer.active = [0, 5, 10]
    trainer.num_layers = 28
    assert trainer.uncheckpointed_layers() == {0, 4, 5, 9, 10}
    trainer.num_layers = 26
    assert trainer.uncheckpointed_layers() == {0, 5, 10}
    trainer.method_config.uncheckpointed = "active"
    trainer.num_layers = 28
    assert trainer.uncheckpointed_layers() == {0, 5, 10}


def test_schedule_and_cleanup_after_training(tmp_path):
    trainer = make_trainer("tvaccine", tmp_path, options={"active_layers": 2, "resample_every": 2, "score_every": 3},
                           model_overrides={"num_hidden_layers": 3}, max_steps=4, batch_size=2, harmful=HARMFUL)
    trainer.train()
    assert [s for s, _ in trainer.probability_history] == [0, 3]
    assert [s for s, _ in trainer.layer_history] == [0, 2]
    assert all(len(a) == 2 for _, a in trainer.layer_history)
    assert any("active_layers" in h for h in trainer.state.log_history)
    # after training: everything trainable again, no forward wrappers left
    assert all(p.requires_grad for p in trainer._trainable)
    assert all("forward" not in layer.__dict__ for layer in layers_of(trainer.model))


def test_config_validation():
    for bad in ({"freeze": "mlp"}, {"uncheckpointed": "all"}, {"active_layers": 0}, {"rho": -1.0}):
        with pytest.raises(ClinicError):
            TVaccineConfig(**bad)
    assert TVaccineConfig().stream_specs() == {"harmful": ("beavertails-harmful", 200)}
