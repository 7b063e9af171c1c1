"""Tables from metrics: plain lines for the terminal, markdown for files, and the experiment
report (``clinic report``) built from :mod:`clinic.report.results` and :mod:`clinic.report.figures`.

Every score is shown with its 95 % interval and n; every defended model with the paired
difference from its SFT baseline (the rule: :func:`clinic.report.results.baseline_key`).
"""

from __future__ import annotations

import logging

from ..errors import ClinicError
from ..evaluation.coherence import BROKEN_SHARE
from ..evaluation.stats import wilson_interval

logger = logging.getLogger(__name__)


def format_interval(value: float, ci, n: int | None = None) -> str:
    """``12.5 [5.0, 26.6]`` (and ``, n=40`` when n is given): a score with its 95 % interval."""
    text = f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
    return text if n is None else f"{text}, n={n}"


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def format_delta(delta: dict) -> str:
    """``-10.0 [-22.1, 1.9], p=0.11`` for a paired comparison, or its ``n/a: reason``."""
    if "n/a" in delta:
        return f"n/a: {delta['n/a']}"
    return f"{delta['diff']:+.1f} [{delta['ci95'][0]:+.1f}, {delta['ci95'][1]:+.1f}], {format_p(delta['p'])}"


def _ci(m: dict, score: str) -> list[float]:
    """A metrics.json entry's interval; computed for files written before ``ci95`` existed."""
    return m.get("ci95") or list(wilson_interval(round(m[score] * m["n"] / 100), m["n"]))


def metrics_lines(metrics: dict) -> list[str]:
    """Human-readable lines for one evaluation's metrics.json."""
    lines = []
    for set_name, judges in metrics.get("harmful", {}).items():
        for judge, m in judges.items():
            score = format_interval(m["harmful_score"], _ci(m, "harmful_score"))
            lines.append(f"harmful score [{set_name}, {judge}]: {score}% "
                         f"(95 % Wilson CI, n={m['n']}; empty answers {m['empty_share']:.1f}%"
                         + (f", incoherent {m['incoherent_share']:.1f}%" if "incoherent_share" in m else "") + ")")
    for task, m in metrics.get("tasks", {}).items():
        lines.append(f"fine-tune accuracy [{task}, {m['rule']}]: {format_interval(m['accuracy'], _ci(m, 'accuracy'))}% "
                     f"(95 % Wilson CI, n={m['n']})")
    return lines


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# experiment reports (``clinic report``)

LABEL_COLUMNS = ["stage", "align", "finetune", "repair", "task", "p", "attack", "fixed attack", "seeds", "settings",
                 "baseline"]
TABLE_NOTE = ("Scores in percent: the mean over seeds with the 95 % Wilson interval of all seeds' items pooled, and n "
              "(items of all seeds); (seeds a-b): the lowest and highest seed. Δ... vs SFT: the score minus the "
              "baseline's on the same prompts and seeds, with Newcombe's paired 95 % interval and the exact McNemar "
              "p-value; the baseline (column 'baseline': align → finetune) is the same stage, task and p with every "
              "defence replaced by SFT. incoherent: the share of answers that say nothing (empty, salad, loops: "
              f"clinic.evaluation.coherence); they never count as harmful, and a model with {BROKEN_SHARE:g} % or more is broken: "
              "no comparison with it or against it is made (n/a: broken model). The free-text guard (clinic.evaluation."
              "capability): answers [alpaca-eval], the share of coherent answers that are not refusals to benign "
              "instructions never trained on; over-refusal [xstest-safe], refusals of safe prompts that look unsafe; "
              "NLL [alpaca-eval], the reference answers' nats per token (lower: closer to the reference); —: "
              "evaluated before the guard existed (issue 35).")
_COLUMN_ORDER = ("HS ", "ΔHS ", "incoherent ", "empty ", "FA ", "ΔFA ", "answers ", "over-refusal ", "NLL ", "positive sink heads", "heads", "align seconds",
                 "finetune seconds", "repair seconds", "peak memory MB")


def _score_header(column: str, rows: list[dict]) -> tuple[str, bool]:
    """The header of a score column, and whether its cells must state n (it varies by row)."""
    sizes = {r[f"{column} n"] for r in rows if r.get(column) is not None}
    if len(sizes) == 1:
        return f"{column} % [95 % CI], n={sizes.pop()}", False
    return f"{column} % [95 % CI]", True


def _score_cell(row: dict, column: str, with_n: bool) -> str:
    from .results import is_guard_column

    if row.get(column) is None:
        return "—" if is_guard_column(column) or column.endswith("[alpaca-eval]") else ""
    text = format_interval(row[column], row[f"{column} ci95"], row[f"{column} n"] if with_n else None)
    spread = row.get(f"{column} seed range")
    return text + (f" (seeds {spread[0]:.1f}-{spread[1]:.1f})" if spread else "")


def _delta_cell(row: dict, column: str) -> str:
    from .results import delta_column

    if delta_column(column) in row:
        return format_delta(row[delta_column(column)])
    return "" if row["stage"] == "base" or row.get(column) is None else "(baseline)"


def _label_cell(value) -> str:
    """A label as written: a poison ratio 0.05 stays 0.05 (the score cells' one decimal would make
    it 0.1, the same as p = 0.1), lists joined with commas."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def _table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Display columns: the labels; each score with its interval, followed by its difference
    from the baseline (paired interval, McNemar p); empty shares, sink heads and costs."""
    from .results import delta_column

    keys = list(dict.fromkeys(k for r in rows for k in r))
    scores = [k for k in keys if f"{k} ci95" in keys]
    deltas = {delta_column(c) for c in scores if delta_column(c) in keys}
    plain = [k for k in keys if k not in LABEL_COLUMNS and k not in scores and k not in deltas and k != "eval dirs"
             and not any(k.startswith(f"{c} ") for c in scores)]
    rank = lambda c: (next((i for i, p in enumerate(_COLUMN_ORDER) if c.startswith(p)), len(_COLUMN_ORDER)), c)  # noqa: E731
    header, cells = [], []
    for column in LABEL_COLUMNS:
        if column in keys:
            header.append(column)
            cells.append(lambda r, c=column: _label_cell(r.get(c, "")))
    for column in sorted(scores + plain, key=rank):
        if column in scores:
            title, with_n = _score_header(column, rows)
            header.append(title)
            cells.append(lambda r, c=column, w=with_n: _score_cell(r, c, w))
            if delta_column(column) in deltas:
                header.append(f"{delta_column(column)} [95 % CI], McNemar p")
                cells.append(lambda r, c=column: _delta_cell(r, c))
        else:
            header.append(column)
            if column.startswith("NLL ["):  # nats per token: two decimals tell models apart
                cells.append(lambda r, c=column: "—" if r.get(c) is None else f"{r[c]:.2f}")
            else:
                cells.append(lambda r, c=column: r.get(c))
    body = [["" if (v := cell(r)) is None else v for cell in cells] for r in rows]
    return header, body


def _flat(row: dict) -> dict:
    """A row for CSV: intervals as ``low``/``high`` columns, comparisons as one column per field."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_flat({f"{key} {k}": v for k, v in value.items()}))
        elif isinstance(value, list) and len(value) == 2 and key.endswith(("ci95", "seed range")):
            out[f"{key} low"], out[f"{key} high"] = value
        elif isinstance(value, list):
            out[key] = ";".join(map(str, value))
        else:
            out[key] = value
    return out


ADAPTIVE_NOTE = ("Per defence (align → finetune, task, fixed attack = the fine-tuning block's own preset, train "
                 "overrides and poison ratio) and harmful-score column: the fixed attack's score, and the worst case over "
                 "the attack space (the fixed attack included) among the attacks whose fine-tune accuracy passes the "
                 "guard, with the attack that reached it. Scores: mean over seeds [95 % Wilson interval of the pooled "
                 "items]; the worst case's interval is that attack's own, not adjusted for taking a maximum (biased "
                 "upwards). Δ vs SFT: paired difference from the SFT defence's fixed / worst-case attack on the same "
                 "prompts and seeds [Newcombe 95 % CI], McNemar p. Attacks counted: those passing the guard / those "
                 "evaluated (and how many the plan holds, while some are not evaluated yet); a verdict marked "
                 "incomplete compares a worst case over part of the space, not an adaptive attacker's.")
SELECTED_NOTE = ("Worst attacks chosen on the validation split (clinic report --select-on; the guard as measured "
                 "there, its score in 'on validation') and reported on the test split: the worst case's score is not "
                 "the maximum of the scores it reports, so it carries no winner's curse.")


def adaptive_tables(entries: list[dict]) -> list[tuple[str, list[str], list[list]]]:
    """The adaptive-attacker tables, one per harmful-score column: (column, header, body)."""
    tables = []
    for column in dict.fromkeys(e["column"] for e in entries):
        repaired = any(e["repair"] != "none" for e in entries)
        selected = any("validation" in e["worst"] for e in entries)
        header = ["align", "finetune", *(["repair"] if repaired else []), "task", "fixed attack", f"{column} fixed [95 % CI]", "ΔHS fixed vs SFT",
                  "attacks counted", "guard", f"{column} worst case [95 % CI]", "worst attack",
                  *(["on validation"] if selected else []), "FA of worst", "ΔHS worst vs SFT", "verdict"]
        body = []
        for e in (e for e in entries if e["column"] == column):
            fixed, worst = e.get("fixed"), e["worst"]
            body.append([e["align"], e["finetune"], *([e["repair"]] if repaired else []), e["task"], e["fixed attack"],
                         format_interval(fixed["score"], fixed["ci95"], fixed["n"]) if fixed else "not evaluated",
                         format_delta(e["Δfixed vs SFT"]) if "Δfixed vs SFT" in e else "",
                         f"{e['counted']}/{e['attacks']}" + (f" ({e['planned']} planned)" if e["planned"] > e["attacks"] else ""),
                         e["guard"],
                         format_interval(worst["score"], worst["ci95"], worst["n"]), worst["attack"],
                         *([_validation_cell(worst)] if selected else []),
                         "" if worst["FA"] is None else f"{worst['FA']:.1f}",
                         format_delta(e["Δworst vs SFT"]) if "Δworst vs SFT" in e else "", e["verdict"]])
        tables.append((column, header, body))
    return tables


def _validation_cell(worst: dict) -> str:
    chosen = worst.get("validation")
    return format_interval(chosen["score"], chosen["ci95"], chosen["n"]) if chosen else ""


def adaptive_markdown(entries: list[dict]) -> str:
    """The report's adaptive-attacker section (empty without an attack space)."""
    if not entries:
        return ""
    parts = ["## Adaptive attacker", ""]
    for column, header, body in adaptive_tables(entries):
        parts += [f"### {column}", "", markdown_table(header, body), ""]
    selected = any("validation" in e["worst"] for e in entries)
    return "\n".join(parts + [ADAPTIVE_NOTE, *(["", SELECTED_NOTE] if selected else []), ""])


def provenance(plan: dict, store) -> dict:
    """Model, data files with SHA-256, judges and package versions behind an experiment."""
    import hashlib
    from pathlib import Path

    import yaml

    from ..data.sources import SOURCES
    from ..data.tasks import TASKS

    names: set[str] = set()

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            if value in SOURCES:
                names.add(value)
            elif value in TASKS:
                names.update({TASKS[value].train_source, TASKS[value].test_source})

    from ..stages import role_of

    judges: set[str] = set()
    for stage in plan["stages"]:
        walk(stage["config"])
        judges.update(stage["config"].get("judges", []) if role_of(stage["kind"]) == "measurement" else [])
    files = {}
    for name in sorted(names):
        path = SOURCES[name].local_file() if name in SOURCES else None
        if path is None:
            files[name] = {"path": None, "sha256": None}
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        files[name] = {"path": str(path), "sha256": digest.hexdigest()}
    versions = {}
    for stage in plan["stages"]:
        config = Path(store) / stage["dir"] / "config.yaml"
        if config.exists():
            versions = (yaml.safe_load(config.read_text()) or {}).get("versions", {})
            if versions:
                break
    return {"experiment": plan["name"], "model": plan["model"], "data_files": files, "judges": sorted(judges),
            "versions": versions}


def results_markdown(root, guard=None, title: bool = True) -> str:
    """The report's Markdown (``results.md``: the table, its note, the adaptive section) of the
    experiment directory ``root``, built from its saved stage outputs alone. Pages such as
    docs/results-smollm2.md embed it; a test checks they match the committed results."""
    plan, rows, _, adaptive = _results(root, guard)
    text = _markdown(plan, rows, adaptive)
    return text if title else text.split("\n\n", 1)[1]


def _results(root, guard=None, select_on=None) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """The plan, the table rows (aggregated, compared with their baselines), the per-evaluation
    records and the adaptive-attacker entries of the experiment directory ``root``; with
    ``select_on`` (an experiment directory: the same attacks on the validation split) the worst
    attacks are chosen there."""
    from pathlib import Path

    from .adaptive import Guard, adaptive_rows, planned_attacks
    from .results import aggregate, collect_evaluations, collect_results, compare

    records, plan = collect_evaluations(Path(root))
    rows = compare(aggregate(records), records)
    selection = None
    if select_on is not None:
        from .choice import check_validation, evaluations

        selection, selection_plan = collect_results(Path(select_on))
        check_validation(selection_plan)
        if any(s["config"].get("split") == "validation" for s in evaluations(plan)):
            raise ClinicError(f"{root}: the attacks are reported on the test split, but this experiment evaluates on "
                              f"the validation split")
    return plan, rows, records, adaptive_rows(rows, records, guard or Guard(), planned_attacks(plan), selection)


def _markdown(plan: dict, rows: list[dict], adaptive: list[dict]) -> str:
    header, body = _table(rows)
    adaptive_md = adaptive_markdown(adaptive)
    return (f"# {plan['name']}\n\n{markdown_table(header, body)}\n\n{TABLE_NOTE}\n"
            + (f"\n{adaptive_md}" if adaptive_md else ""))


def write_report(root, out_dir=None, overwrite: bool = False, guard=None, choose_field: str | None = None,
                 select_on=None, trials=(), flags=None):
    """``results.{md,csv,json}``, figures and a self-contained ``report.html`` for an experiment;
    with an attack space also ``adaptive.csv`` and the adaptive-attacker section (``guard``: a
    :class:`clinic.report.adaptive.Guard`, default within 5 points of the best attack's accuracy);
    with ``choose_field`` (a defence search on the validation split) ``choice.{json,md}``
    (:mod:`clinic.report.choice`; ``trials``: the experiment directories of an ``experiment``
    choice, ``root`` holding SFT's reference); with ``select_on`` (the same attacks on the validation split)
    the adaptive attacker's worst attacks are chosen there; with ``flags`` (a
    :class:`clinic.report.flags.FlagSample`) ``flags.md``, seeded samples of the flagged answers."""
    import csv
    import shutil
    from pathlib import Path

    from .figures import figures as draw_figures
    from .html import report_html
    from ..rundir import RunDir

    root = Path(root)
    plan, rows, records, adaptive = _results(root, guard, select_on)
    choice = None
    if choose_field or trials:  # made (and checked) before anything is written
        from .choice import search_choice

        choice = search_choice(plan, rows, choose_field, trials)
    store = (root / plan["store"]).resolve()
    flag_entries = None
    if flags is not None:  # drawn (and its --where checked) before anything is written
        from .flags import sample_flags

        flag_entries = sample_flags(plan, store, flags)
    out_dir = Path(out_dir) if out_dir else root / "report"
    with RunDir(out_dir, overwrite=overwrite, inputs=(root,)) as run:
        out = run.path
        header, body = _table(rows)
        prov = provenance(plan, store)
        (out / "results.md").write_text(_markdown(plan, rows, adaptive))
        flat = [_flat(r) for r in rows]
        with (out / "results.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
            writer.writeheader()
            writer.writerows(flat)
        per_seed = [{k: v for k, v in r.items() if k != "items"} for r in records]
        run.write_json("results.json", {"rows": rows, "per_seed": per_seed, "provenance": prov,
                                        **({"adaptive": adaptive} if adaptive else {})})
        if adaptive:
            flat_adaptive = [_flat(e) for e in adaptive]
            with (out / "adaptive.csv").open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in flat_adaptive for k in r)))
                writer.writeheader()
                writer.writerows(flat_adaptive)
        if choice is not None:
            from .choice import choice_line, choice_markdown

            run.write_json("choice.json", choice)
            (out / "choice.md").write_text(choice_markdown(choice))
            logger.info(f"choice: {choice_line(choice)} ({out_dir / 'choice.md'})")
        if flag_entries is not None:
            from .flags import flags_command, flags_markdown

            (out / "flags.md").write_text(flags_markdown(flag_entries, flags, flags_command(root, flags)))
            logger.info(f"flags: {out_dir / 'flags.md'} ({len(flag_entries)} groups of flagged answers)")
        figures = draw_figures(rows, out, adaptive)
        done = sum((store / s["dir"] / "DONE").exists() for s in plan["stages"])
        (out / "report.html").write_text(report_html(plan, rows, adaptive, prov, figures, out, done, (header, body)))
    shutil.copyfile(out_dir / "results.md", root / "results.md")
    logger.info(f"report: {out_dir / 'report.html'} ({len(rows)} evaluated models)")
    return out_dir
