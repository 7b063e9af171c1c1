"""RepNoise (Rosati et al. 2024): push the representations of harmful text towards Gaussian
noise, keep the refusals, and ascend the harmful loss (docs/reference/algorithms.md §3.4).

With H a harmful batch (harmful prompt + harmful answer), S the alignment batch (prompt +
refusal) and masks M_H, M_S over their token positions::

    keep  = masked CE on S                                       (positions M_S)
    CE_k  = masked CE on H of lm_head(final_norm(h_k)),  k = 0..L  (logit lens; h_0 the
            embeddings' output, h_k the residual stream after layer k, so CE_L = CE_final)
    harm  = (CE_final + sum_k CE_k) / (L + 1) + 1
    noise = (1/L) sum_l MMD( flatten(M_H * r_l(H)), flatten(M_H * N(0, I)) )
            r_l: the output of layer l's MLP (``noise_on="mlp"``, the reference) or the residual
            stream after layer l (``noise_on="hidden"``); one MMD sample = one sequence
            flattened to [T*D]; Gaussian kernels at 5 bandwidths (multiplier 2) around the mean
            pairwise squared distance
    loss  = keep + beta * noise - alpha * log(harm)

Masks. ``paired=True`` (default): M_H and M_S are the answer tokens of each batch, and H is built
from the harmful rows that share S's prompts when the two data sets share prompts (the RepNoise
authors' intent); rows with no harmful twin get a harmful row drawn from the stream.
``paired=False`` reproduces the git-disl / T-Vaccine trainers: H is drawn independently and the
one mask is "the token ids of H and S differ" (so it covers almost everything after the shared
template prefix), restricted here to each batch's non-padding tokens.

Two forward passes (H, S) and one backward per step, plus L vocabulary projections for the
logit lens (only at the masked positions, not over the whole [B, T, V]).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ClinicError
from ..modeling.hooks import capture_outputs, decoder_layers, final_norm, mlp_modules
from ..modeling.parallel import unwrap
from .config import HarmfulStreamConfig
from .engines import WHOLE_WEIGHT_ENGINES
from .registry import register_method
from .trainer import ClinicTrainer

logger = logging.getLogger(__name__)

NOISE_ON = ("mlp", "hidden")


@dataclass
class RepNoiseConfig(HarmfulStreamConfig):
    alpha: float = field(default=0.1, metadata={"help": "weight of the harmful-loss ascent term -alpha*log(harm) (reference --rho)"})
    beta: float = field(default=0.001, metadata={"help": "weight of the noise (MMD) term (reference --lamb)"})
    paired: bool = field(
        default=True,
        metadata={"help": "pair harmful and refusal rows by prompt where possible and mask answers only; "
                          "false: independent draws and the reference's token-difference mask"},
    )
    noise_on: str = field(default="mlp", metadata={"help": "representations pushed to noise: 'mlp' outputs (reference) or 'hidden' states"})


    def __post_init__(self):
        if self.noise_on not in NOISE_ON:
            raise ClinicError(f"unknown noise_on {self.noise_on!r}; choose one of {', '.join(NOISE_ON)}")
        if self.alpha < 0 or self.beta < 0:
            raise ClinicError("alpha and beta must be non-negative")


# --------------------------------------------------------------------------------------------
# the loss terms


def mmd(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Gaussian-kernel MMD between two sets of flattened samples ([n, d] each), as in the
    RepNoise code: ``kernel_num`` bandwidths spaced by ``kernel_mul`` around the mean pairwise
    squared distance (detached). Distances via the Gram matrix, not an [n, n, d] tensor."""
    n = source.shape[0]
    total = torch.cat([source, target], dim=0).float()
    sq = total.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * total @ total.T).clamp_min(0.0)
    m = total.shape[0]
    bandwidth = dist.detach().sum() / (m * m - m)
    bandwidth = bandwidth / kernel_mul ** (kernel_num // 2)
    kernels = sum(torch.exp(-dist / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    xx, yy = kernels[:n, :n], kernels[n:, n:]
    xy, yx = kernels[:n, n:], kernels[n:, :n]
    return (xx + yy - xy - yx).mean()


def _targets(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch index, position of the predicting logits, target id) for every masked t >= 1."""
    sel = mask[:, 1:].bool()
    b, t = sel.nonzero(as_tuple=True)
    return b, t, ids[:, 1:][sel]


def masked_ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over the token positions t >= 1 with ``mask[:, t]`` (logits at t-1)."""
    b, t, target = _targets(ids, mask)
    if target.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits[b, t].float(), target)


def lens_ce(hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, norm, head, softcap: float | None = None) -> torch.Tensor:
    """:func:`masked_ce` of the logit lens ``head(norm(hidden))``, projected only where needed."""
    b, t, target = _targets(ids, mask)
    if target.numel() == 0:
        return hidden.sum() * 0.0
    logits = head(norm(hidden[b, t]))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), target)


def repnoise_terms(model, harmful: dict, harmless: dict, mask_h: torch.Tensor, mask_s: torch.Tensor,
                   alpha: float, beta: float, noise_on: str = "mlp", generator: torch.Generator | None = None) -> dict:
    """Every term of the RepNoise loss (``loss`` included) for one pair of batches."""
    layers = decoder_layers(model)
    n_layers = len(layers)
    layer_out: dict[int, torch.Tensor] = {}
    mlp_out: dict[int, torch.Tensor] = {}
    with capture_outputs(dict(enumerate(layers)), layer_out), \
            capture_outputs(dict(enumerate(mlp_modules(model))) if noise_on == "mlp" else {}, mlp_out):
        out_h = model(input_ids=harmful["input_ids"], attention_mask=harmful.get("attention_mask"),
                      output_hidden_states=True, use_cache=False)
    reps = mlp_out if noise_on == "mlp" else layer_out
    noise = 0.0
    m = mask_h.unsqueeze(-1)
    for i in range(n_layers):
        rep = reps[i].float() * m
        gaussian = torch.randn(rep.shape, device=rep.device, dtype=rep.dtype, generator=generator) * m
        noise = noise + mmd(rep.reshape(rep.shape[0], -1), gaussian.reshape(rep.shape[0], -1))
    noise = noise / n_layers

    ids_h = harmful["input_ids"]
    ce_final = masked_ce(out_h.logits, ids_h, mask_h)
    inner = unwrap(model)  # the forwards go through ``model`` (DDP's sync); lookups need the model itself
    norm, head = final_norm(inner), inner.get_output_embeddings()
    softcap = getattr(getattr(inner, "config", None), "final_logit_softcapping", None)
    hidden = [out_h.hidden_states[0]] + [layer_out[i] for i in range(n_layers - 1)]
    lens = [lens_ce(h, ids_h, mask_h, norm, head, softcap) for h in hidden] + [ce_final]  # k = L is the final
    harm = (ce_final + sum(lens)) / (n_layers + 1) + 1
    del out_h, layer_out, mlp_out, reps, hidden

    out_s = model(input_ids=harmless["input_ids"], attention_mask=harmless.get("attention_mask"), use_cache=False)
    keep = masked_ce(out_s.logits, harmless["input_ids"], mask_s)
    loss = keep + beta * noise - alpha * torch.log(harm)
    return {"loss": loss, "keep": keep, "harm": harm, "noise": noise, "ce_final": ce_final, "lens": lens}


def _pad_to(batch: dict, length: int, pad_id: int) -> dict:
    ids, attn = batch["input_ids"], batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    extra = length - ids.shape[1]
    if extra <= 0:
        return {"input_ids": ids, "attention_mask": attn, "labels": batch.get("labels")}
    out = {"input_ids": F.pad(ids, (0, extra), value=pad_id), "attention_mask": F.pad(attn, (0, extra), value=0)}
    if batch.get("labels") is not None:
        out["labels"] = F.pad(batch["labels"], (0, extra), value=-100)
    return out


def difference_masks(harmful: dict, harmless: dict, pad_id: int) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """The reference's mask, "token ids differ", on batches padded to a common length (and
    restricted to each batch's real tokens). Returns the padded batches and (M_H, M_S).

    Both batches must have the same number of rows (the reference pairs row i with row i)."""
    length = max(harmful["input_ids"].shape[1], harmless["input_ids"].shape[1])
    h, s = _pad_to(harmful, length, pad_id), _pad_to(harmless, length, pad_id)
    differ = h["input_ids"] != s["input_ids"]
    return h, s, differ & h["attention_mask"].bool(), differ & s["attention_mask"].bool()


def prompt_key(input_ids, labels) -> tuple[int, ...]:
    """The prompt tokens of a row: everything before its first label."""
    labels = list(labels)
    first = next((i for i, v in enumerate(labels) if v != -100), len(labels))
    return tuple(int(x) for x in list(input_ids)[:first])


# --------------------------------------------------------------------------------------------
# the trainer


@register_method("repnoise", stage="align", config=RepNoiseConfig,
                 summary="representation noising: MMD to Gaussian noise + harmful-loss ascent + refusal CE (2 fwd, 1 bwd)",
                 engines=WHOLE_WEIGHT_ENGINES)
class RepNoiseTrainer(ClinicTrainer):
    """RepNoise: one combined loss on a harmful batch and the alignment batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        cfg: RepNoiseConfig = self.method_config
        if "harmful" not in self.extra_datasets:
            raise ClinicError("RepNoise needs the 'harmful' data stream (harmful prompt + answer pairs)")
        self._harmful_rows = self.extra_datasets["harmful"].select_columns(["input_ids", "labels"])
        self._by_prompt: dict[tuple[int, ...], list[int]] = {}
        self.n_shared_prompts = 0
        if cfg.paired:
            for i, row in enumerate(self._harmful_rows):
                self._by_prompt.setdefault(prompt_key(row["input_ids"], row["labels"]), []).append(i)
            train_keys = {prompt_key(r["input_ids"], r["labels"]) for r in self.train_dataset.select_columns(["input_ids", "labels"])}
            self.n_shared_prompts = len(train_keys & set(self._by_prompt))
            if self.n_shared_prompts == 0:
                logger.warning("RepNoise paired: the alignment and harmful data share no prompt; harmful batches are "
                               "drawn independently (masks still cover answers only)")
        self._use_count: dict[tuple[int, ...], int] = {}
        self._fill_generator = torch.Generator().manual_seed(self.args.seed + 4242)
        self._fill_order: list[int] = []

    def _next_fill(self) -> int:
        if not self._fill_order:
            self._fill_order = torch.randperm(len(self._harmful_rows), generator=self._fill_generator).tolist()
        return self._fill_order.pop()

    def harmful_batch(self, inputs: dict) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
        """(H, S, M_H, M_S) for the alignment batch ``inputs``."""
        cfg: RepNoiseConfig = self.method_config
        pad_id = self.processing_class.pad_token_id
        if not cfg.paired:  # row i of H against row i of S: the same number of rows
            return difference_masks(self.next_batch("harmful", inputs["input_ids"].shape[0]), inputs, pad_id)
        if self.n_shared_prompts == 0:
            h = self.next_batch("harmful", inputs["input_ids"].shape[0])
        else:
            rows = []
            for ids, labels in zip(inputs["input_ids"].tolist(), inputs["labels"].tolist()):
                key = prompt_key(ids, labels)
                twins = self._by_prompt.get(key)
                if twins:
                    count = self._use_count.get(key, 0)
                    self._use_count[key] = count + 1
                    rows.append(twins[count % len(twins)])
                else:
                    rows.append(self._next_fill())
            h = self._prepare_inputs(self.data_collator([self._harmful_rows[i] for i in rows]))
        return h, inputs, h["labels"] != -100, inputs["labels"] != -100

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg: RepNoiseConfig = self.method_config
        model.train()
        inputs = self._prepare_inputs(inputs)
        harmful, harmless, mask_h, mask_s = self.harmful_batch(inputs)
        with self.maybe_activation_offload_context:
            with self.compute_loss_context_manager():
                terms = repnoise_terms(model, harmful, harmless, mask_h, mask_s, cfg.alpha, cfg.beta, cfg.noise_on)
            self.backward(terms["loss"])
        metrics = self._metrics["train"]
        for name in ("keep", "harm", "noise"):
            value = float(terms[name].detach())  # logged only: no autograd warning
            if math.isfinite(value):
                metrics[f"repnoise/{name}"].append(value)
        return terms["loss"].detach() / self.current_gradient_accumulation_steps
