"""``clinic data``: list the named datasets and where each is found."""

from __future__ import annotations

from .parser import ArgParser


def parser(name: str) -> ArgParser:
    return ArgParser(prog=f"clinic {name}", description="List the named datasets and where each is found.")


def run(_args) -> None:
    from ..data.sources import SOURCES
    from ..settings import data_dir

    print(f"data directory: {data_dir() or '(unset: set CLINIC_DATA_DIR)'}")
    for name, source in SOURCES.items():
        local = source.local_file()
        where = str(local) if local else (f"hub {source.hub[0]}" if source.hub else "missing")
        print(f"  {name:28s} {source.kind:15s} {where}")
