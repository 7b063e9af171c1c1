"""Surgery: the loss against an independent eager reference, training on every tiny arch."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from _alignment_support import tiny_trainer

from clinic.data.formatting import training_row
from clinic.data.samples import Sample, probe_ids
from clinic.errors import ClinicError
from clinic.modeling.training import train_config
from clinic.methods.registry import get_method, method_config
from clinic.methods.surgery import SurgeryConfig, SurgeryTrainer
from clinic.modeling.attention import position_ids_for
from clinic.modeling.models import tiny_random_model


# On a random model every head attends almost uniformly, so a probe's sink attention is about
# the mean of 1/(i+1): short probes look more at the sink. Short harmful and long harmless
# probes therefore give positive divergences, and the regulariser has something to push on.
HARMFUL = [Sample(f"bad {i}?", "", f"ok {i}") for i in range(4)]
HARMLESS = [Sample(f"Please tell me a long story about baking bread number {i}.", "",
                   f"Sure, here is a long story about bread and flour and water, number {i}.") for i in range(4)]
USER = [Sample(f"What is {i} plus {i}?", "", f"It is {2 * i}.") for i in range(8)]


def make_trainer(tmp_path, arch="llama", lora=True, system_prompt="You are a helpful assistant.", max_steps=2,
                 harmful=HARMFUL, harmless=HARMLESS, lr=1e-3, **options):
    trainer = tiny_trainer("surgery", "finetune", tmp_path, samples=USER,
                           extra_data={"harmful_probes": harmful, "harmless_probes": harmless}, options=options,
                           arch=arch, seed=2, lora=lora, max_steps=max_steps, batch_size=2, lr=lr,
                           schedule="constant", logging_steps=1, system_prompt=system_prompt, save_steps=0)
    return trainer, trainer.processing_class


def eager_sink(ref, ids, mask):
    out = ref(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), output_attentions=True,
              use_cache=False)
    per_layer = []
    for attn in out.attentions:
        rows = []
        for b in range(ids.shape[0]):
            real = mask[b].nonzero().flatten()
            rows.append(attn[b, :, real[1:], real[0]].mean(-1))
        per_layer.append(torch.stack(rows))
    return torch.stack(per_layer)  # [L, B, H]


def test_registered_with_reference_defaults():
    spec = get_method("surgery", "finetune")
    cfg = method_config(spec)
    assert (cfg.lam, cfg.sink_index, cfg.probe_max_length, cfg.probes_per_step) == (300.0, 0, 512, 1)
    assert cfg.stream_specs() == {"harmful_probes": ("beavertails-harmful", 1000),
                                  "harmless_probes": ("beavertails-harmless", 1000)}
    for bad in ({"sink_mode": "nope"}, {"lam": -1.0}, {"probes_per_step": 0}, {"sink_index": -1}):
        with pytest.raises(ClinicError):
            method_config(spec, **bad)


def test_probes_have_no_system_prompt(tmp_path):
    trainer, tok = make_trainer(tmp_path)
    ids = trainer.probe_pools["harmful_probes"][0]
    assert ids == probe_ids(tok, HARMFUL[0], 512)
    text = tok.decode(ids)
    assert "helpful assistant" not in text and "bad 0?" in text and "ok 0" in text
    assert text.startswith("<|im_start|>user")


# Equal-length probes (defined below) give heads of both signs: the default step's probe
# backward is gated on "some head is positive", and only a mixed case can tell that gate from
# a stricter one (e.g. "every head is positive") that silently turns Surgery into SFT.
PROBE_SETS = {"all_positive": (HARMFUL, HARMLESS), "mixed_signs": None}


@pytest.mark.parametrize("probes", sorted(PROBE_SETS))
@pytest.mark.parametrize("separate", [False, True])
def test_loss_and_gradient_equal_eager_reference(tmp_path, separate, probes):
    lam = 50.0
    harmful, harmless = PROBE_SETS[probes] or (HARMFUL_EQ, HARMLESS_EQ)
    trainer, _ = make_trainer(tmp_path, lora=False, lam=lam, probes_per_step=2, separate_backward=separate,
                              harmful=harmful, harmless=harmless)
    model = trainer.model
    ref, _ = tiny_random_model("llama", seed=2)
    ref.load_state_dict(model.state_dict())
    ref.set_attn_implementation("eager")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    if separate:
        loss = trainer.training_step(model, dict(batch))
    else:
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
    ids, mask, n = trainer.last_probe_batch
    assert ids.shape[0] == 4 and n == 2

    keys = ("input_ids", "attention_mask", "labels")
    ce = ref(**{k: batch[k] for k in keys if k in batch}, use_cache=False).loss
    a = eager_sink(ref, ids, mask)
    d = a[:, :n].mean(1) - a[:, n:].mean(1)
    assert (d > 0).sum() > 0
    if probes == "mixed_signs":
        assert (d < 0).sum() > 0, "the mixed case needs heads of both signs"
    else:
        assert (d > 0).all()
    ref_loss = ce + lam * torch.relu(d).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trainer.last_divergence, d.detach(), rtol=0, atol=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.abs().sum(), name
            continue
        assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm() + 1e-8, name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "mistral"])
def test_trains_on_each_arch(tmp_path, arch):
    trainer, _ = make_trainer(tmp_path, arch=arch, lora=arch != "mistral")  # mistral: full fine-tuning
    before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "sink_reg" in h]
    assert len(logs) == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert all(h["sink_positive_heads"] >= 0 for h in logs)
    after = [p.detach() for p in trainer.model.parameters() if p.requires_grad]
    assert any(not torch.equal(x, y) for x, y in zip(before, after))


def test_large_lambda_lowers_the_regulariser(tmp_path):
    trainer, _ = make_trainer(tmp_path, lora=False, lam=1000.0, max_steps=6, lr=3e-3, harmful=HARMFUL[:1],
                              harmless=HARMLESS[:1])
    trainer.create_optimizer_and_scheduler(num_training_steps=6)
    probes = trainer.draw_probes()
    with torch.no_grad():
        r0, d0 = trainer.regulariser(trainer.model, probes)
    assert r0 > 0
    trainer.train()
    with torch.no_grad():
        r1, d1 = trainer.regulariser(trainer.model, probes)
    assert r1 < 0.5 * r0, (float(r0), float(r1))
    assert (d1 > 0).sum() <= (d0 > 0).sum()


def test_lambda_zero_is_sft(tmp_path):
    trainer, _ = make_trainer(tmp_path, lam=0.0)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, trainer.lm_loss(trainer.model, batch))


def test_missing_probe_stream_is_an_error(tmp_path):
    model, tok = tiny_random_model("llama")
    train = train_config(max_steps=1, batch_size=2)
    rows = [training_row(tok, train.prompt_format(), s.instruction, s.input, s.output) for s in USER]
    with pytest.raises(ClinicError, match="harmless_probes"):
        SurgeryTrainer(model=model, args=train.sft_config(str(tmp_path / "o")), train_dataset=Dataset.from_list(rows),
                       processing_class=tok, method_config=SurgeryConfig(), prompt_format=train.prompt_format(),
                       extra_data={"harmful_probes": HARMFUL})


def test_pipeline_runs_surgery(tmp_path, data_dir):
    from clinic.stages.train import DataConfig, run_train
    from clinic.rundir import read_metrics

    out = run_train("finetune", model="tiny-random-llama", method="surgery",
                    train=train_config(max_steps=2, batch_size=2, logging_steps=1, max_length=64),
                    data=DataConfig(task="sst2", n=8, poison_ratio=0.25), output=tmp_path / "run",
                    method_options={"harmful_probe_pool": 16, "harmless_probe_pool": 16, "probe_max_length": 64})
    assert read_metrics(out)["steps"] == 2
    log = (out / "train_log.jsonl").read_text()
    assert "sink_reg" in log and "sink_positive_heads" in log


def test_most_attended_sink_mode(tmp_path):
    from clinic.modeling.attention import sink_attention_values

    trainer, _ = make_trainer(tmp_path, lora=False, sink_mode="most_attended")
    ids, mask, n = probes = trainer.draw_probes()
    with torch.no_grad():
        reg, d = trainer.regulariser(trainer.model, probes)
        values = sink_attention_values(trainer.model, ids, mask, mode="most_attended")
    torch.testing.assert_close(d, values[:, :n].mean(1) - values[:, n:].mean(1))
    torch.testing.assert_close(reg, torch.relu(d).mean())


# Probes of equal token length (byte-level tokenizer: equal byte length), so that the divergence
# comes from content, not from length, and has both signs on a random model.
HARMFUL_EQ = [Sample("how to hurt him?", "", "hit him hard")]
HARMLESS_EQ = [Sample("how to bake pie?", "", "use the salt")]


def test_divergence_is_harmful_minus_harmless_on_probes_the_test_chooses(tmp_path):
    """The reference does not trust the trainer's probe batch: it builds its own from one harmful
    and one harmless probe of equal length, so swapping the two streams (or the sign) fails."""
    lam = 50.0
    trainer, tok = make_trainer(tmp_path, lora=False, lam=lam, probes_per_step=2, harmful=HARMFUL_EQ,
                                harmless=HARMLESS_EQ)
    model = trainer.model
    harmful, harmless = probe_ids(tok, HARMFUL_EQ[0], 512), probe_ids(tok, HARMLESS_EQ[0], 512)
    assert len(harmful) == len(harmless) and harmful != harmless
    ref, _ = tiny_random_model("llama", seed=2)
    ref.load_state_dict(model.state_dict())
    ref.set_attn_implementation("eager")
    ids = torch.tensor([harmful, harmless])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = eager_sink(ref, ids, mask)  # [L, 2, H]
    d = a[:, 0] - a[:, 1]
    assert (d > 0).any() and (d < 0).any()  # relu(d) != relu(-d): a swapped sign cannot pass

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        ce = ref(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, use_cache=False).loss
    torch.testing.assert_close(trainer.last_divergence, d, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ce + lam * torch.relu(d).mean(), rtol=1e-5, atol=1e-6)


def test_probe_term_moves_the_default_step_when_some_heads_are_negative(tmp_path):
    """The default step's gradient differs from CE alone by λ ∇R whenever a head is positive,
    even if others are negative; and equals CE alone when λ = 0 (nothing else differs)."""
    grads = {}
    for lam in (0.0, 50.0):
        trainer, _ = make_trainer(tmp_path / str(lam), lora=False, lam=lam, probes_per_step=1,
                                  harmful=HARMFUL_EQ, harmless=HARMLESS_EQ)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(trainer.model, dict(batch))
        d = trainer.last_divergence
        assert (d > 0).any() and (d < 0).any()
        grads[lam] = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    assert (grads[50.0] - grads[0.0]).norm() > 1e-3 * grads[0.0].norm()


def _shifted(trainer, positive: int):
    """Wrap the trainer's regulariser so that exactly ``positive`` heads of d stay positive (d is
    shifted by a constant, which keeps its gradient): a gate on the probe backward must fire for one."""
    original = trainer.regulariser

    def regulariser(model, probes=None):
        _, d = original(model, probes)
        flat = d.detach().flatten().sort(descending=True).values
        cut = (flat[positive - 1] + flat[positive]) / 2 if positive else flat[0] + 1e-3
        d = d - cut
        trainer.last_divergence = d.detach()
        return torch.relu(d).mean(), d

    trainer.regulariser = regulariser


@pytest.mark.parametrize("positive", [0, 1, 2])
def test_default_step_gradient_equals_the_one_graph_step_for_any_number_of_positive_heads(tmp_path, positive):
    """separate_backward (the default) against the one-graph step, which has no gate: equal
    gradients when 0, 1 or 2 heads are positive, so a gate stricter than "any head" fails."""
    grads = {}
    for separate in (False, True):
        trainer, _ = make_trainer(tmp_path / str(separate), lora=False, lam=50.0, separate_backward=separate)
        _shifted(trainer, positive)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = 1
        if separate:
            trainer.training_step(trainer.model, dict(batch))
        else:
            trainer.compute_loss(trainer.model, dict(batch)).backward()
        assert int((trainer.last_divergence > 0).sum()) == positive
        grads[separate] = [p.grad.clone() for p in trainer.model.parameters()]
    for a, b in zip(grads[True], grads[False]):
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-8
