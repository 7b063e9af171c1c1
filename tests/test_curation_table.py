"""benchmarks/curation_table.py, on the committed results folders (no run needed)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_full_data_row_reads_the_committed_cell_b():
    from curation_table import rows

    table = rows(ROOT / "results" / "calib-b", [], "harm-ce")
    assert len(table) == 1
    full = table[0]
    assert full["data"] == "full data" and (full["align_rows"], full["align_steps"]) == (1536, 384)
    # cell B's figures as docs/protocol.md cites them (harm-ce, n = 200)
    assert (full["aligned"], full["p=0.1"], full["p=0.2"]) == ("2.0 [0.8, 5.0]", "20.5 [15.5, 26.6]", "45.0 [38.3, 51.9]")


def test_a_curated_run_is_paired_with_the_full_data(tmp_path):
    """A copy of cell B posing as a curated run: every difference is zero (Newcombe's interval
    around a zero difference with no discordant pair is still about +-2 points at n = 200)."""
    from _results import add_stage, standalone_copy
    from curation_table import rows

    copy = standalone_copy(ROOT / "results" / "calib-b", tmp_path / "curated")
    add_stage(copy, "curate-pharmacist-000000000000", "curate",
              {"selector": "pharmacist", "k": 410, "n_candidates": 1024, "selector_seconds": 12.5})
    full, curated = rows(ROOT / "results" / "calib-b", [copy], "harm-ce")
    assert curated["data"] == "pharmacist" and curated["selector_seconds"] == 12.5 and curated["k"] == 410
    for key in ("aligned", "p=0.1", "p=0.2"):
        diff = curated[f"{key} - full"]
        assert diff.startswith("+0.0 [-") and diff.endswith("], p = 1"), diff
        assert curated[key] == full[key]


def test_a_folder_with_several_methods_and_seeds_gives_its_sft_fine_tunes_pooled():
    """results/protocol-seeds holds SFT and Surgery fine-tunes at each p on three seeds: the full-data
    row is SFT's, pooled over the seeds (docs/results-smollm2.md section 3e), not the last method read."""
    from curation_table import rows

    (full,) = rows(ROOT / "results" / "protocol-seeds", [], "harm-ce")
    assert full["seeds"] == "0,1,2"
    assert (full["aligned"], full["p=0.1"], full["p=0.2"]) == ("1.8 [1.0, 3.3]", "18.7 [15.8, 22.0]", "46.0 [42.1, 50.0]")


def test_seeds_are_paired_seed_by_seed(tmp_path):
    """A copy of the three-seed folder posing as curated: every paired difference is exactly zero
    (each seed meets its own copy; clinic.report.results.paired_comparison pairs by seed)."""
    from _results import standalone_copy
    from curation_table import rows

    copy = standalone_copy(ROOT / "results" / "protocol-seeds", tmp_path / "curated")
    _, curated = rows(ROOT / "results" / "protocol-seeds", [copy], "harm-ce")
    for key in ("aligned", "p=0.1", "p=0.2"):
        assert curated[f"{key} - full"].startswith("+0.0 [-") and curated[f"{key} - full"].endswith("], p = 1")


def test_curation_stages_of_several_seeds(tmp_path):
    """Selector seconds are averaged over the seeds' curate stages; counts that differ are an error."""
    import pytest
    from _results import add_stage
    from curation_table import curation_of

    def stage(name, **metrics):
        add_stage(tmp_path, name, name.split("-")[0], metrics)

    stray = tmp_path / "store" / "curate-random-z"  # another experiment's stage in the shared store: not read
    stray.mkdir(parents=True)
    (stray / "metrics.json").write_text('{"selector": "random", "k": 1, "n_candidates": 1, "selector_seconds": 1}')
    (stray / "DONE").write_text("")
    stage("curate-pharmacist-a", selector="pharmacist", k=410, n_candidates=1024, selector_seconds=100.0)
    stage("curate-pharmacist-b", selector="pharmacist", k=410, n_candidates=1024, selector_seconds=300.0)
    stage("align-sft-a", n_train=615, steps=154, train_seconds=1000.0)
    stage("align-sft-b", n_train=615, steps=154, train_seconds=1200.0)
    info = curation_of(tmp_path)
    assert (info["selector"], info["k"], info["selector_seconds"]) == ("pharmacist", 410, 200.0)
    assert (info["align_rows"], info["align_steps"], info["align_seconds"]) == (615, 154, 1100.0)
    stage("align-sft-c", n_train=600, steps=150, train_seconds=900.0)
    with pytest.raises(SystemExit, match="disagree on align_rows"):
        curation_of(tmp_path)


def test_a_model_missing_a_seed_is_shown(tmp_path):
    """A run still going (seed 2's p = 0.2 not evaluated yet): the seeds column names each model's seeds
    rather than claiming all three for every score."""
    import json
    import shutil

    from _results import standalone_copy
    from curation_table import rows

    copy = standalone_copy(ROOT / "results" / "protocol-seeds", tmp_path / "partial")
    plan = json.loads((copy / "plan.json").read_text())
    (stage,) = [s["dir"] for s in plan["stages"] if s["kind"] == "evaluate" and s["labels"].get("seed") == 2
                and s["labels"].get("p") == 0.2 and s["labels"].get("finetune") == "sft"]
    shutil.rmtree(copy / "store" / stage)
    (full,) = rows(copy, [], "harm-ce")
    assert full["seeds"] == "aligned 0,1,2; p=0 0,1,2; p=0.1 0,1,2; p=0.2 0,1"


def test_a_seed_the_full_data_lacks_is_a_clear_error():
    """Three curated seeds against a one-seed full-data folder cannot be paired: said, not asserted."""
    import pytest
    from curation_table import rows

    with pytest.raises(SystemExit, match="baseline has no seed 1"):
        rows(ROOT / "results" / "calib-b", [ROOT / "results" / "protocol-seeds"], "harm-ce")


def test_a_folder_of_two_alignments_is_read_for_the_one_asked():
    """results/c2-tvac holds SFT and T-Vaccine alignments (C5 under T-Vaccine compares with its
    T-Vaccine cell): --align picks one; without it the ambiguity is an error naming --align."""
    import pytest

    from curation_table import rows

    folder = ROOT / "results" / "c2-tvac"
    (tv,) = rows(folder, [], "harm-ce", align="tvaccine")
    assert (tv["aligned"], tv["p=0.1"], tv["p=0.2"]) == ("3.5 [1.7, 7.0]", "58.5 [51.6, 65.1]", "69.0 [62.3, 75.0]")
    import json

    from _results import stage_dir

    plan = json.loads((folder / "plan.json").read_text())
    (name,) = [s["dir"] for s in plan["stages"] if s["dir"].startswith("align-tvaccine-")]
    stage = stage_dir(folder, name)
    seconds = json.loads((stage / "metrics.json").read_text())["train_seconds"]
    assert tv["align_rows"] == 1536 and tv["align_seconds"] == seconds  # T-Vaccine's own stage, not SFT's
    (sft,) = rows(folder, [], "harm-ce", align="sft")
    assert sft["p=0.1"] == "20.5 [15.5, 26.6]"
    with pytest.raises(SystemExit, match="--align"):
        rows(folder, [], "harm-ce")
