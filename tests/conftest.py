"""Shared fixtures. Tests never touch the hub; data comes from CLINIC_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are dominated by thread overhead: one thread is much faster on a busy 2-core box.
torch.set_num_threads(1)
os.environ.setdefault("CLINIC_THREADS", "1")  # the CLI commands tests call keep to one thread too
_default_data = Path(__file__).resolve().parents[2] / "shared" / "data"
if "CLINIC_DATA_DIR" not in os.environ and _default_data.exists():
    os.environ["CLINIC_DATA_DIR"] = str(_default_data)


@pytest.fixture
def data_dir() -> Path:
    """The real data directory (../shared/data); tests needing it skip only when it is absent."""
    value = os.environ.get("CLINIC_DATA_DIR")
    if not value or not Path(value).exists():
        pytest.skip("CLINIC_DATA_DIR is not set (the data directory ../shared/data is missing)")
    return Path(value)


@pytest.fixture
def tiny_llama():
    from clinic.modeling.models import tiny_random_model

    return tiny_random_model("llama")
