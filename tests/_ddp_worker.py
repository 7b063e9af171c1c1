"""Run ``clinic`` commands in every process of a multi-process group (used by tests/test_ddp.py).

    accelerate launch --multi_gpu --num_processes 2 tests/_ddp_worker.py commands.json

with ``ACCELERATE_USE_CPU=true`` gives two CPU processes on gloo. Each command is one
``clinic.cli.main`` argv, run in order in the same processes (one start-up for all of them).
Every model is trained in float64 (:func:`float64_models`): see tests/test_ddp.py for why.
"""

import contextlib
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

import clinic.stages.train  # noqa: E402
from clinic.cli import main  # noqa: E402


@contextlib.contextmanager
def float64_models():
    """Every model the pipeline loads, and the LoRA adapter it attaches (PEFT makes adapters
    float32 whatever the base), is cast to float64 while this is active."""
    load, attach = clinic.stages.train.load_chain, clinic.stages.train.attach_lora

    def load_chain_float64(*args, **kwargs):
        model, tok = load(*args, **kwargs)
        return model.double(), tok

    clinic.stages.train.load_chain = load_chain_float64
    clinic.stages.train.attach_lora = lambda model, settings: attach(model, settings).double()
    try:
        yield
    finally:
        clinic.stages.train.load_chain, clinic.stages.train.attach_lora = load, attach


if __name__ == "__main__":
    with float64_models():
        for argv in json.loads(Path(sys.argv[1]).read_text()):
            code = main(argv)
            if code != 0:
                sys.exit(code)
