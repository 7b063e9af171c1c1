"""The stages: every unit of work clinic runs (curate, align, finetune, repair, evaluate, sink),
each a registered :class:`~.base.StageKind` run by the one :func:`~.base.execute`.

One module per kind (:mod:`.curate`, :mod:`.train` for align and finetune, :mod:`.repair`,
:mod:`.evaluate`, :mod:`.sink`); :mod:`.base` holds the contract and the registry. Adding a kind
is one module that calls :func:`~.base.register_stage` (docs/architecture.md).
"""

from __future__ import annotations

from .base import STAGE_KINDS, StageContext, StageKind, execute, get_stage_kind, register_stage, role_of

__all__ = ["STAGE_KINDS", "StageContext", "StageKind", "execute", "get_stage_kind", "register_stage", "role_of"]
