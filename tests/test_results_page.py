"""The marked tables of docs/results-smollm2.md and docs/protocol.md are the committed results,
regenerated (issue 13, part 3): a page cannot drift from results/ unnoticed, and a fresh clone
rebuilds it from the repository."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@functools.cache  # one module, so its table cache serves every test (the sink table takes seconds)
def _module():
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MARKED_PAGES = ["docs/results-smollm2.md", "docs/protocol.md"]  # the pages whose tables are generated


def test_every_page_with_a_marker_is_checked():
    module = _module()
    pages = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if module.count(p.read_text(encoding="utf-8")))
    assert pages == sorted(MARKED_PAGES)


@pytest.mark.parametrize("name", MARKED_PAGES)
def test_the_pages_tables_match_the_committed_results(name):
    page = (ROOT / name).read_text(encoding="utf-8")
    module = _module()
    assert module.count(page), f"{name} has no marker"
    assert module.fill(page) == page, f"stale tables: run python benchmarks/results_page.py {name}"


def test_a_changed_number_is_caught(tmp_path):
    """Plant a wrong number in a copy of the page: the fill puts the committed one back."""
    page = (ROOT / "docs" / "results-smollm2.md").read_text(encoding="utf-8")
    module = _module()
    match = module.MARKED.search(page)
    body = match["body"]
    planted = body.replace("[", "[9", 1)
    assert planted != body
    tampered = page.replace(body, planted, 1)
    assert module.fill(tampered) == page


def test_empty_markers_are_filled_each_with_its_own_folder():
    """A new page has empty markers; each is filled on its own (a lazy pattern once ran the first
    marker into the second and dropped the text between them)."""
    module = _module()
    page = ("intro\n<!-- report: results/calib-b -->\n<!-- /report -->\n\nbetween\n\n"
            "<!-- report: results/repair-b -->\n<!-- /report -->\nend\n")
    filled = module.fill(page)
    assert "between" in filled and filled.endswith("end\n")
    assert filled.count("<!-- /report -->") == 2
    first, second = module.MARKED.finditer(filled)
    assert first["folder"] == "results/calib-b" and "| finetuned | sft | sft | sst2 | 0.05 |" in first["body"]
    assert second["folder"] == "results/repair-b" and "antidote" in second["body"]


@pytest.mark.parametrize("script, planted", [("curation_table.py", ("42.5", "24.5")),
                                             ("seed_table.py", ("80.0 vs 85.5", "85.0 vs 85.5")),
                                             ("attack_table.py", ("68.5 [61.8, 74.5]", "6.8 [61.8, 74.5]")),
                                             ("sink_trend.py", ("| sft | surgery | 0.2 | 5 ", "| sft | surgery | 0.2 | 15 ")),
                                             ("protocol_table.py", ("| calib-a3 | 0.0 [0.0, 1.9] | 26.5", "| calib-a3 | 0.0 [0.0, 1.9] | 6.5")),
                                             ("tuned_table.py", ("| lam 5, alpha 0.1 |", "| lam 1, alpha 0.1 |"))])
def test_the_scripts_tables_are_regenerated_too(script, planted):
    """The C5 table, the per-seed tables, the per-attack table and the sink-head table are filled
    like the report tables: a planted number in each is put back."""
    page = "".join((ROOT / name).read_text(encoding="utf-8") for name in MARKED_PAGES)
    module = _module()
    match = next(m for m in module.TABLE.finditer(page) if m["script"] == script and planted[0] in m["body"])
    body = match["body"]
    tampered = page.replace(body, body.replace(*planted, 1), 1)
    assert tampered != page
    assert module.fill(tampered) == page


def test_an_unknown_table_script_is_named_with_a_suggestion():
    module = _module()
    with pytest.raises(SystemExit, match="unknown table script 'seed_tables.py'; did you mean seed_table.py"):
        module.fill("<!-- table: seed_tables.py results/protocol-seeds -->\n<!-- /table -->\n")


def test_the_results_folder_stays_within_its_budget():
    """results/ travels with every clone (and with the working tree to a device machine, 64 MiB in
    all): its stated budget (docs/results-smollm2.md) is 25 MB, raised from 20 when the T-Vaccine
    search's last trial took it to 20.1.
    A folder's ``report/`` (what `clinic report` writes beside results.md) is ignored by git: not counted."""
    results = ROOT / "results"
    size = sum(p.stat().st_size for p in results.rglob("*")
               if p.is_file() and p.relative_to(results).parts[1:2] != ("report",))
    assert size <= 25_000_000, f"results/ holds {size / 1e6:.1f} MB, over its 25 MB budget"


def test_a_page_naming_an_unknown_script_exits_2_and_is_left_as_it_was(tmp_path, capsys):
    module = _module()
    page = tmp_path / "page.md"
    text = "<!-- table: seed_tables.py results/protocol-seeds -->\n<!-- /table -->\n"
    page.write_text(text)
    with pytest.raises(SystemExit) as error:
        module.main([str(page)])
    assert error.value.code == 2 and page.read_text() == text
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["results_page: error: unknown table script 'seed_tables.py'; did you mean seed_table.py?"]


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "results").glob("*/results.md")))
def test_each_folders_results_md_is_its_report(folder):
    """A folder's committed results.md is what `clinic report` writes from the folder now: a stage
    exported after the report (or found in the shared store) cannot leave it stale."""
    from clinic.report.tables import results_markdown

    path = ROOT / "results" / folder
    assert (path / "results.md").read_text() == results_markdown(path), \
        f"stale: run clinic report results/{folder} (then remove results/{folder}/report)"


def test_every_results_folder_reads_the_shared_store():
    """One store for the results tree: a folder with a store of its own would copy stages again."""
    import json

    plans = sorted((ROOT / "results").glob("*/plan.json"))
    assert plans
    for plan in plans:
        assert json.loads(plan.read_text())["store"] == "../store", plan
        assert not (plan.parent / "store").exists(), plan.parent


def test_the_incoherent_column_holds_a_known_value():
    """Issue 35: Panacea after p = 0.2 writes token salad (85.5 % of its answers, by the rule): the
    column shows it, its harmful score no longer counts the salad, and it wins no comparison. An
    empty or zero column cannot pass."""
    from clinic.report.results import collect_results

    rows, _ = collect_results(ROOT / "results" / "repair-b")
    panacea = next(r for r in rows if r.get("repair") == "panacea" and r["p"] == 0.2)
    assert panacea["incoherent [beavertails-test] n"] == 200
    assert panacea["incoherent [beavertails-test]"] >= 60
    assert panacea["HS harm-ce [beavertails-test]"] < 20  # 59.0 when the salad counted as harm
    assert all(v["n/a"].startswith("broken model") for k, v in panacea.items() if k.startswith("Δ"))
    page = (ROOT / "docs" / "results-smollm2.md").read_text(encoding="utf-8")
    assert "incoherent [beavertails-test] % [95 % CI]" in page
