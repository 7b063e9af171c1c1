"""Reference defaults against tuned settings, one pair of rows per searched defence (issue 36,
part 4), from the committed results folders alone.

    python benchmarks/tuned_table.py [--judge harm-ce]

For each defence of :data:`DEFENCES`: the **reference** row is the protocol's measurement at the
reference defaults (test split, seed 0, the folder the results page decides the claims from); the
**tuned** row is the setting its defence search chose on the validation split
(``results/search-<name>/choice.json``, written by ``clinic report --choose``) and, once it has
run, its final measurement on the test split (``results/tuned-<name>``, every seed pooled; while the
seeds are exported one by one, the row says which are in). Until
then the row says how far the search is: trials measured on the validation split out of the
budget, counted from the search's committed plan and stages. Columns: the knobs' values (a knob a
stage config leaves out is the method's default, read from its config class), harmful score at
p = 0.1 and 0.2 (incoherent answers never count; their share at p = 0.2 beside), SST2 accuracy and the free-text guard's
answered share at p = 0.2, and the cost of the defence's own stage (alignment, curation or repair
seconds; the attack and evaluation cost as SFT's). Guard columns a reference evaluation predates
come from the key cells' re-run (results/protocol-guard, same stage hashes), marked †.

Used by the results page: ``<!-- table: tuned_table.py -->`` (benchmarks/results_page.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from clinic.report.choice import SETTING_KIND, planned_trials, trial_stages
from clinic.report.results import (
    BASELINE,
    REPAIR_FIELD,
    aggregate,
    collect_evaluations,
    hs_column,
    incoherent_column,
)
from clinic.report.tables import format_interval, markdown_table
from clinic.rundir import load_plan
from clinic.stages import get_stage_kind

ROOT = Path(__file__).resolve().parents[1]
GUARD_FOLDER = "results/protocol-guard"  # the key cells re-run with the free-text guard (issue 35)
PS = (0.1, 0.2)
ANSWERS = "answers [alpaca-eval]"


@dataclass(frozen=True)
class Defence:
    name: str
    field: str  # what its trials differ in: align, finetune, repair or experiment (clinic.report.choice)
    label: str | None  # its label in that field in the reference folder (None: a curation, every row)
    knobs: tuple[str, ...]  # config keys shown as its setting (looked for at any depth of the stage config)
    config_class: str  # module:class whose field defaults fill a knob a stage config leaves out
    reference: str  # results folder of the reference defaults (test split)
    search: str  # results folder(s) of the search (a glob for one experiment per trial)
    budget: int
    choice: str  # the committed choice
    tuned: str  # results folder of the final measurement at the chosen setting
    search_file: str  # the experiment file of the search's reference trial (its stages are the reference's)

    @property
    def kind(self) -> str:
        """The stage kind that carries its setting (as the choice reads it)."""
        return SETTING_KIND[self.field]


DEFENCES = (
    Defence("T-Vaccine", "align", "tvaccine", ("rho", "active_layers", "epochs"),
            "clinic.methods.tvaccine:TVaccineConfig", "results/c2-tvac", "results/search-tvaccine-smollm2", 8,
            "results/search-tvaccine-smollm2/choice.json", "results/tuned-tvaccine-smollm2",
            "configs/search-tvaccine-smollm2.yaml"),
    Defence("Pharmacist", "experiment", None, ("ratio", "gamma"),
            "clinic.stages.curate:CurateConfig", "results/c5-pharmacist", "results/search-pharmacist-r*", 6,
            "results/search-pharmacist-smollm2/choice.json", "results/tuned-pharmacist-smollm2",
            "configs/search-pharmacist-r0.4-g1-smollm2.yaml"),
    Defence("Panacea", "repair", "panacea", ("rho",),
            "clinic.repair.panacea:PanaceaConfig", "results/repair-b", "results/search-panacea-smollm2", 6,
            "results/search-panacea-smollm2/choice.json", "results/tuned-panacea-smollm2",
            "configs/search-panacea-smollm2.yaml"),
    Defence("Booster", "align", "booster", ("lam", "alpha"),
            "clinic.methods.booster:BoosterConfig", "results/protocol-align-defences", "results/search-booster-smollm2", 4,
            "results/search-booster-smollm2/choice.json", "results/tuned-booster-smollm2",
            "configs/search-booster-smollm2.yaml"),
    Defence("Vaccine", "align", "vaccine", ("rho",),
            "clinic.methods.vaccine:VaccineConfig", "results/defences-vaccine", "results/search-vaccine-smollm2", 4,
            "results/search-vaccine-smollm2/choice.json", "results/tuned-vaccine-smollm2",
            "configs/search-vaccine-smollm2.yaml"),
    Defence("RepNoise", "align", "repnoise", ("alpha", "beta"),
            "clinic.methods.repnoise:RepNoiseConfig", "results/protocol-align-defences", "results/search-repnoise-smollm2",
            4, "results/search-repnoise-smollm2/choice.json", "results/tuned-repnoise-smollm2",
            "configs/search-repnoise-smollm2.yaml"),
    Defence("Lisa", "finetune", "lisa", ("rho", "align_steps", "finetune_steps"),
            "clinic.methods.lisa:LisaConfig", "results/defences-ft", "results/search-lisa-smollm2", 4,
            "results/search-lisa-smollm2/choice.json", "results/tuned-lisa-smollm2", "configs/search-lisa-smollm2.yaml"),
    Defence("Surgery", "finetune", "surgery", ("lam",),
            "clinic.methods.surgery:SurgeryConfig", "results/defences-ft", "results/search-surgery-smollm2", 4,
            "results/search-surgery-smollm2/choice.json", "results/tuned-surgery-smollm2", "configs/search-surgery-smollm2.yaml"),
    Defence("SafeLoRA", "repair", "safelora", ("num_layers",),
            "clinic.repair.safelora:SafeLoRAConfig", "results/repair-b", "results/search-safelora-smollm2", 4,
            "results/search-safelora-smollm2/choice.json", "results/tuned-safelora-smollm2", "configs/search-safelora-smollm2.yaml"),
    Defence("Antidote", "repair", "antidote", ("fraction",),
            "clinic.repair.antidote:AntidoteConfig", "results/repair-b", "results/search-antidote-smollm2", 4,
            "results/search-antidote-smollm2/choice.json", "results/tuned-antidote-smollm2", "configs/search-antidote-smollm2.yaml"),
)


def _find(config, key: str):
    """``key``'s value at any depth of a stage config (options and train sections nest), or None."""
    if isinstance(config, dict):
        if key in config:
            return config[key]
        for value in config.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def knob_defaults(defence: Defence) -> dict:
    """The defaults of the defence's knobs, from its config class (an alignment stage's config
    holds its whole training section, so ``epochs`` is always written out)."""
    module, name = defence.config_class.split(":")
    cls = getattr(importlib.import_module(module), name)
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.name in defence.knobs and f.default is not dataclasses.MISSING}


def setting(defence: Defence, config: dict | None) -> str:
    """The knobs' values in a stage config, e.g. ``rho 3, active_layers 8, epochs 2``."""
    if config is None:
        return "—"
    defaults = knob_defaults(defence)
    values = {k: _find(config, k) for k in defence.knobs}
    values = {k: defaults.get(k) if v is None else v for k, v in values.items()}
    return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in values.items())


def _plan(folder: Path) -> dict:
    return load_plan(folder)[0]


def _done(store: Path, stage: dict) -> Path | None:
    """A finished stage's directory in ``store``, else None."""
    path = Path(store) / stage["dir"]
    return path if (path / "DONE").is_file() else None


def _setting_stage(defence: Defence, plan: dict, label: str | None) -> dict | None:
    """The first stage of the plan that carries the trial ``label``'s setting."""
    return next(iter(trial_stages(plan["stages"], defence.field, label)), None)


def _cost(folder: Path, stage: dict | None) -> float | None:
    """Seconds the stage that made the defence's model took (its kind's metrics key)."""
    path = _done(load_plan(folder)[1], stage) if stage else None
    if path is None or not (path / "metrics.json").is_file():
        return None
    # a curation records its selector's time; the curate kind names no seconds key (it makes no model)
    seconds = get_stage_kind(stage["kind"]).seconds or {"curate": "selector_seconds"}.get(stage["kind"])
    return json.loads((path / "metrics.json").read_text(encoding="utf-8")).get(seconds) if seconds else None


def _rows(folder: Path, defence: Defence, label: str | None) -> dict:
    """``{p: row}`` of the defence's attacked (or repaired) models in ``folder`` at :data:`PS`."""
    records, _ = collect_evaluations(folder)
    stage = "repaired" if defence.field == REPAIR_FIELD else "finetuned"
    out = {}
    for row in aggregate(records):
        if row["stage"] != stage or row.get("p") not in PS:
            continue
        if defence.kind == "curate":  # a curation's folder: SFT alignment and fine-tuning on the subset
            if row.get("align") != BASELINE or row.get("finetune") != BASELINE:
                continue
        elif row.get(defence.field) != label:
            continue
        if row["p"] in out:
            raise SystemExit(f"{folder}: two {defence.name} models at p = {row['p']:g}")
        out[row["p"]] = row
    return out


def _parents(folder: Path) -> dict:
    """Evaluation directory -> the hash of the stage it evaluated, from the folder's plan."""
    return {s["dir"]: s["parent"] for s in _plan(folder)["stages"] if s["kind"] == "evaluate"}


def _guard_rows() -> dict:
    """The key cells' rows by the hash of the model they evaluated: the guard columns an older
    evaluation of the same model lacks."""
    folder = ROOT / GUARD_FOLDER
    if not (folder / "plan.json").is_file():
        return {}
    parents = _parents(folder)
    records, _ = collect_evaluations(folder)
    return {parents[d]: row for row in aggregate(records) for d in row["eval dirs"] if d in parents}


def _answers(row: dict | None, parents: dict, guard: dict) -> str:
    if row is None:
        return "—"
    if row.get(ANSWERS) is not None:
        return format_interval(row[ANSWERS], row.get(f"{ANSWERS} ci95"))
    same_model = [guard[parents[d]] for d in row["eval dirs"] if parents.get(d) in guard]
    if same_model and same_model[0].get(ANSWERS) is not None:
        return format_interval(same_model[0][ANSWERS], same_model[0].get(f"{ANSWERS} ci95")) + " †"
    return "—"


def _cells(rows: dict, column: str, parents: dict, guard: dict) -> list[str]:
    hs = [format_interval(rows[p][column], rows[p].get(f"{column} ci95")) if p in rows and rows[p].get(column) is not None
          else "—" for p in PS]
    last = rows.get(PS[-1])
    fa = format_interval(last["FA sst2"], last.get("FA sst2 ci95")) if last and last.get("FA sst2") is not None else "—"
    incoherent = incoherent_column("beavertails-test")
    salad = f"{last[incoherent]:.1f}" if last and last.get(incoherent) is not None else "—"
    return [*hs, salad, fa, _answers(last, parents, guard)]


def _seeds(seeds: list) -> str:
    """``seed 0`` or ``seeds 1, 2``."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def seed_note(rows: dict, plan: dict) -> str:
    """Which of the plan's seeds the tuned rows hold: a final measurement is exported seed by seed
    (benchmarks/search_trials.py --by seed), so a row of one seed out of three must say so."""
    planned = sorted({s["labels"].get("seed", 0) for s in plan["stages"]})
    measured = sorted(set.intersection(*(set(r["seeds"]) for r in rows.values()))) if rows else []
    if len(planned) <= 1:
        return "test"
    if measured == planned:
        return f"test, {_seeds(measured)} pooled"  # two or more: the one-seed plan returned above
    missing = [s for s in planned if s not in measured]
    return f"test, {_seeds(measured) if measured else 'no seed'} of {len(planned)} so far; {_seeds(missing)} pending"


def trials_measured(defence: Defence) -> tuple[int, int]:
    """(trials whose every validation evaluation is committed, trials planned): the trials as the
    choice reads them from each search plan (one per folder for an experiment search)."""
    folders = sorted(Path(p) for p in glob.glob(str(ROOT / defence.search)) if (Path(p) / "plan.json").is_file())
    done: dict = {}
    for folder in folders:
        plan, store = load_plan(folder)
        evaluations = [s for s in plan["stages"] if s["kind"] == "evaluate"]
        if defence.field == "experiment":
            done[folder.name] = all(_done(store, s) for s in evaluations)
            continue
        for label in planned_trials(plan, defence.field):
            done[label] = all(_done(store, s) for s in evaluations if s["labels"].get(defence.field) == label)
    if defence.field == "experiment":  # a trial's folder exists only once exported: the plan is the budget
        return sum(done.values()), max(len(done), defence.budget)
    return sum(done.values()), len(done)


def _cost_cell(seconds: float | None) -> str:
    from clinic.experiment.estimate import duration

    return "—" if seconds is None else duration(seconds)


def table_rows(judge: str = "harm-ce") -> list[list[str]]:
    column = hs_column(judge, "beavertails-test")
    guard = _guard_rows()
    body = []
    for d in DEFENCES:
        ref_folder = ROOT / d.reference
        ref_plan = _plan(ref_folder)
        ref_stage = _setting_stage(d, ref_plan, d.label)
        body.append([d.name, "reference defaults", setting(d, ref_stage and ref_stage["config"]),
                     *_cells(_rows(ref_folder, d, d.label), column, _parents(ref_folder), guard), _cost_cell(_cost(ref_folder, ref_stage)),
                     f"{d.reference} (test, seed 0)"])
        measured, planned = trials_measured(d)
        choice_path = ROOT / d.choice
        choice = json.loads(choice_path.read_text(encoding="utf-8")) if choice_path.is_file() else None
        if choice is None or choice.get("incomplete"):  # no choice file, or one written while trials ran
            progress = (f"search: {measured} of {planned} trials measured on validation (budget {d.budget})"
                        if planned else f"search not run (budget {d.budget})")
            body.append([d.name, "tuned", "not chosen yet", *["—"] * 6, progress])
            continue
        if choice.get("chosen") is None:
            body.append([d.name, "tuned", "no trial kept capability", *["—"] * 6,
                         f"{d.choice}: {planned} trials, none eligible"])
            continue
        chosen_setting = setting(d, (choice.get("settings") or {}).get("config"))
        tuned = ROOT / d.tuned
        if not (tuned / "plan.json").is_file():
            body.append([d.name, "tuned", chosen_setting, *["—"] * 6,
                         f"chosen on validation ({d.choice}); test run pending"])
            continue
        label = None if d.kind == "curate" else choice["chosen"]
        rows, tuned_plan = _rows(tuned, d, label), _plan(tuned)
        body.append([d.name, "tuned", chosen_setting, *_cells(rows, column, _parents(tuned), guard),
                     _cost_cell(_cost(tuned, _setting_stage(d, tuned_plan, label))),
                     f"{d.tuned} ({seed_note(rows, tuned_plan)})"])
    return body


HEADER = ["defence", "row", "setting", "HS p = 0.1", "HS p = 0.2", "incoherent p = 0.2", "FA p = 0.2", "answers p = 0.2",
          "defence's stage", "from"]


def table_markdown(argv: list[str]) -> str:
    """The table for a results page marker (benchmarks/results_page.py)."""
    args = parse_args(argv)
    return markdown_table(HEADER, table_rows(args.judge))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="harm-ce", help="the judge whose harmful score is shown")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(table_markdown(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
