"""Run ``clinic`` commands in every process of a multi-process group (used by tests/test_ddp.py).

    accelerate launch --multi_gpu --num_processes 2 tests/_ddp_worker.py commands.json

with ``ACCELERATE_USE_CPU=true`` gives two CPU processes on gloo. Each command is one
``clinic.cli.main`` argv, run in order in the same processes (one start-up for all of them).
"""

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from clinic.cli import main  # noqa: E402

if __name__ == "__main__":
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        code = main(argv)
        if code != 0:
            sys.exit(code)
