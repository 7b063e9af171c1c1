"""``clinic methods``: list the registered methods of each stage."""

from __future__ import annotations

from .parser import ArgParser


def parser(name: str) -> ArgParser:
    return ArgParser(prog=f"clinic {name}", description="List the registered methods of each stage.")


def run(_args) -> None:
    from ..methods.registry import methods_for
    from ..repair import repair_methods

    for stage in ("align", "finetune", "repair"):
        print(f"{stage}:")
        for name, spec in (repair_methods() if stage == "repair" else methods_for(stage)).items():
            print(f"  {name:10s} {spec.summary}")
