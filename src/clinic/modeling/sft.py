"""SFT data on TRL's machinery: tokenization (prompt-completion rows, labels on the response tokens
only), collation, length-grouped batches and extra data streams. :class:`SFTData` is the part of
every method's trainer (:class:`clinic.methods.trainer.ClinicTrainer`) that does not depend on a
method, so the gradient workspace (:mod:`.workspace`) tokenizes exactly as training does."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from trl import SFTConfig, SFTTrainer

from ..data.formatting import PromptFormat, training_row
from ..data.samples import Sample
from ..errors import ClinicError
from .parallel import rank, world_size

logger = logging.getLogger("clinic")


class SFTData(SFTTrainer):
    """TRL's SFTTrainer with clinic's data handling: the training rows must keep a response after
    truncation, and ``extra_data`` streams (name -> samples) are tokenized the same way and served
    by :meth:`next_batch`."""

    def __init__(self, *, model, args: SFTConfig, train_dataset: Dataset, processing_class,
                 prompt_format: PromptFormat | None = None, extra_data: dict[str, list[Sample]] | None = None,
                 callbacks=None):
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, callbacks=callbacks
        )
        kept, given = len(self.train_dataset), len(train_dataset)
        if kept == 0:
            raise ClinicError(f"all {given} training samples lose their whole response when truncated to "
                              f"max_length={args.max_length} tokens; raise --max-length")
        if kept < given:
            logger.warning("%d of %d training samples were dropped: their response starts after max_length=%d "
                           "tokens", given - kept, given, args.max_length)
        self.prompt_format = prompt_format or PromptFormat()
        self.extra_datasets: dict[str, Dataset] = {}
        self._extra_iters: dict[str, Iterator] = {}
        for name, samples in (extra_data or {}).items():
            self.extra_datasets[name] = self.prepare_samples(samples, name)

    # -- data ---------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches from a generator of their own, seeded by ``data_seed``: the
        order must not depend on how much of the global RNG a method drew before training
        (Trainer's own LengthGroupedSampler uses the global RNG), so that every method sees
        the same batches."""
        if self.args.train_sampling_strategy != "group_by_length" or world_size() > 1:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        generator = torch.Generator().manual_seed(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        return _ReplayingLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              dataset=dataset, model_input_name="input_ids", generator=generator)

    def prepare_samples(self, samples: list[Sample], name: str) -> Dataset:
        """Tokenize samples exactly as the main training data is tokenized."""
        if not samples:
            raise ClinicError(f"the {name} data stream is empty")
        rows = [training_row(self.processing_class, self.prompt_format, s.instruction, s.input, s.output) for s in samples]
        dataset = Dataset.from_list(rows)
        # Shuffling is next_batch's job (seeded per stream); a new SFTConfig would reset
        # accelerate's state, so flip the flag in place.
        shuffle, self.args.shuffle_dataset = getattr(self.args, "shuffle_dataset", False), False
        try:
            return self._prepare_dataset(dataset, self.processing_class, self.args, False, None, name)
        finally:
            self.args.shuffle_dataset = shuffle

    def next_batch(self, name: str, batch_size: int | None = None, shard: bool = True) -> dict[str, torch.Tensor]:
        """The next collated batch of an extra stream, on the model's device (cycles forever).

        ``batch_size`` is per process. With several processes and ``shard``, one global batch of
        ``batch_size x processes`` rows is drawn (the same seeded order everywhere) and each
        process collates its own slice, so N processes see what one process with an N times
        larger batch sees; ``shard=False`` gives every process the same batch."""
        if name not in self.extra_datasets:
            raise ClinicError(f"method needs the data stream {name!r}, which was not supplied")
        key = f"{name}:{batch_size}:{shard}"
        for _attempt in range(2):
            if key not in self._extra_iters:
                generator = torch.Generator().manual_seed(self.args.seed + len(self._extra_iters) + 1)
                size = batch_size or self.args.per_device_train_batch_size
                parts, part = (world_size(), rank()) if shard else (1, 0)
                loader = DataLoader(
                    self.extra_datasets[name].select_columns(["input_ids", "labels"]),
                    batch_size=size * parts,
                    shuffle=True,
                    generator=generator,
                    collate_fn=self.data_collator if parts == 1 else _SliceCollator(self.data_collator, size, parts, part),
                )
                self._extra_iters[key] = iter(loader)
            try:
                return self._prepare_inputs(next(self._extra_iters[key]))
            except StopIteration:
                del self._extra_iters[key]
        raise RuntimeError("unreachable")

def _replaying_sampler():
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class ReplayingLengthGroupedSampler(LengthGroupedSampler):
        """Length-grouped batches whose order survives a resume in a later epoch. The generator
        draws one permutation per epoch; a resumed run builds a fresh sampler, and the Trainer then
        says which epoch it is in (``set_epoch``): the draws of the epochs before it are replayed and
        discarded, so the epoch's batches are the ones the uninterrupted run trained on (without
        this, a run resumed in epoch 2 trained on epoch 1's order). An uninterrupted run never
        replays: its order is what it always was."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._drawn = 0  # permutations drawn so far (one per epoch)

        def set_epoch(self, epoch: int) -> None:
            while self._drawn < epoch:
                get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
                self._drawn += 1

        def __iter__(self):
            self._drawn += 1
            return super().__iter__()

    return ReplayingLengthGroupedSampler


def _ReplayingLengthGroupedSampler(*args, **kwargs):  # noqa: N802  the class is built on first use (transformers)
    return _replaying_sampler()(*args, **kwargs)


class _SliceCollator:
    """Collate process ``part``'s slice of a global batch drawn for ``parts`` processes (a short
    last batch is filled up cyclically, so that every process gets ``size`` rows)."""

    def __init__(self, collate, size: int, parts: int, part: int):
        self.collate, self.size, self.parts, self.part = collate, size, parts, part

    def __call__(self, rows: list) -> dict:
        need = self.size * self.parts
        rows = [rows[i % len(rows)] for i in range(need)]
        return self.collate(rows[self.part * self.size:(self.part + 1) * self.size])
