"""Tables from metrics: plain lines for the terminal, markdown for files."""

from __future__ import annotations


def metrics_lines(metrics: dict) -> list[str]:
    """Human-readable lines for one evaluation's metrics.json."""
    lines = []
    for set_name, judges in metrics.get("harmful", {}).items():
        for judge, m in judges.items():
            lines.append(f"harmful score [{set_name}, {judge}]: {m['harmful_score']:.1f}% "
                         f"(empty answers {m['empty_share']:.1f}%, n={m['n']})")
    for task, m in metrics.get("tasks", {}).items():
        lines.append(f"fine-tune accuracy [{task}, {m['rule']}]: {m['accuracy']:.1f}% (n={m['n']})")
    return lines


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# experiment reports (``clinic report RUN_DIR``)

RESULT_FIELDS = ["stage", "align", "finetune", "task", "p", "seed"]


def collect_results(root) -> tuple[list[dict], dict]:
    """One row per finished evaluation of an experiment directory, plus the plan."""
    import json
    from pathlib import Path

    from .experiment import load_plan
    from .rundir import read_json

    plan, store = load_plan(root)
    by_hash = {s["hash"]: s for s in plan["stages"]}
    sinks = {s["parent"]: s for s in plan["stages"] if s["kind"] == "sink"}

    def stage_metrics(stage) -> dict | None:
        path = Path(store) / stage["dir"]
        if not (path / "DONE").exists():
            return None
        metrics_file = path / ("sink.json" if stage["kind"] == "sink" else "metrics.json")
        return read_json(metrics_file) if metrics_file.exists() else None

    rows = []
    for stage in plan["stages"]:
        if stage["kind"] != "evaluate":
            continue
        metrics = stage_metrics(stage)
        if metrics is None:
            continue
        labels = stage["labels"]
        row = {k: labels.get(k) for k in RESULT_FIELDS}
        for set_name, judges in metrics.get("harmful", {}).items():
            for judge, m in judges.items():
                row[f"HS {judge} [{set_name}]"] = m["harmful_score"]
            row[f"empty [{set_name}]"] = next(iter(judges.values()))["empty_share"] if judges else None
        for task, m in metrics.get("tasks", {}).items():
            row[f"FA {task}"] = m["accuracy"]
        model_hash = stage["parent"]
        sink = sinks.get(model_hash)
        sink_metrics = stage_metrics(sink) if sink else None
        if sink_metrics:
            last = sink_metrics["entries"][-1]
            row["positive sink heads"] = last["positive_heads"]
            row["heads"] = last["total_heads"]
        parent = by_hash.get(model_hash) if model_hash else None
        peak = 0.0
        while parent is not None:
            pm = stage_metrics(parent) or {}
            if parent["kind"] in ("align", "finetune"):
                row[f"{parent['kind']} seconds"] = pm.get("train_seconds")
                peak = max(peak, pm.get("peak_memory_mb") or 0.0)
            parent = by_hash.get(parent["parent"]) if parent["parent"] else None
        if peak:
            row["peak memory MB"] = peak
        row["eval dir"] = stage["dir"]
        rows.append(row)
    return rows, plan


def provenance(plan: dict, store) -> dict:
    """Model, data files with SHA-256, judges and package versions behind an experiment."""
    import hashlib
    from pathlib import Path

    import yaml

    from .data.sources import SOURCES
    from .tasks import TASKS

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

    judges: set[str] = set()
    for stage in plan["stages"]:
        walk(stage["config"])
        judges.update(stage["config"].get("judges", []) if stage["kind"] == "evaluate" else [])
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


def _series(rows, metric: str):
    """{(align, finetune, task): [(p, mean metric over seeds)]} for fine-tuned rows."""
    groups: dict = {}
    for row in rows:
        if row["stage"] != "finetuned" or row.get(metric) is None:
            continue
        groups.setdefault((row["align"], row["finetune"], row["task"]), {}).setdefault(row["p"], []).append(row[metric])
    return {key: sorted((p, sum(v) / len(v)) for p, v in points.items()) for key, points in groups.items()}


def _figures(rows: list[dict], out) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    columns = sorted({k for r in rows for k in r})
    hs_cols = [c for c in columns if c.startswith("HS ")]
    fa_cols = [c for c in columns if c.startswith("FA ")]
    for name, cols, ylabel in (("hs_vs_p.png", hs_cols, "harmful score (%)"), ("fa_vs_p.png", fa_cols, "fine-tune accuracy (%)")):
        if not cols:
            continue
        fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 3.8), squeeze=False)
        plotted = False
        for ax, col in zip(axes[0], cols):
            for (align, finetune, task), points in sorted(_series(rows, col).items()):
                ax.plot([p for p, _ in points], [v for _, v in points], marker="o", label=f"{align} → {finetune} ({task})")
                plotted = True
            ax.set_xlabel("poison ratio p")
            ax.set_ylabel(ylabel)
            ax.set_title(col)
            ax.grid(alpha=0.3)
        if plotted:
            axes[0][0].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            made.append(name)
        plt.close(fig)
    sink_rows = [r for r in rows if r.get("positive sink heads") is not None]
    if sink_rows and hs_cols:
        fig, axes = plt.subplots(1, len(hs_cols), figsize=(5 * len(hs_cols), 3.8), squeeze=False)
        for ax, col in zip(axes[0], hs_cols):
            for r in sink_rows:
                if r.get(col) is None:
                    continue
                ax.scatter(r["positive sink heads"], r[col], s=25)
                ax.annotate(f"{r['finetune']} p={r['p']:g}", (r["positive sink heads"], r[col]), fontsize=6)
            ax.set_xlabel("positive sink-divergence heads")
            ax.set_ylabel("harmful score (%)")
            ax.set_title(col)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "hs_vs_sink_heads.png", dpi=110)
        plt.close(fig)
        made.append("hs_vs_sink_heads.png")
    return made


_COLUMN_ORDER = ("HS ", "empty ", "FA ", "positive sink heads", "heads", "align seconds", "finetune seconds",
                 "peak memory MB")


def _table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Columns: the labels, then harmful scores, empty shares, accuracies, sink heads, costs."""
    rest = {k for r in rows for k in r} - set(RESULT_FIELDS) - {"eval dir"}
    rank = lambda c: (next((i for i, p in enumerate(_COLUMN_ORDER) if c.startswith(p)), len(_COLUMN_ORDER)), c)  # noqa: E731
    columns = RESULT_FIELDS + sorted(rest, key=rank)
    body = [["" if r.get(c) is None else r.get(c) for c in columns] for r in rows]
    return columns, body


def write_report(root, out_dir=None, overwrite: bool = False):
    """``results.{md,csv,json}``, figures and a self-contained ``report.html`` for an experiment."""
    import base64
    import csv
    import html
    import shutil
    from pathlib import Path

    from .rundir import RunDir

    root = Path(root)
    rows, plan = collect_results(root)
    store = (root / plan["store"]).resolve()
    out_dir = Path(out_dir) if out_dir else root / "report"
    with RunDir(out_dir, overwrite=overwrite, inputs=(root,)) as run:
        out = run.path
        header, body = _table(rows)
        prov = provenance(plan, store)
        table = markdown_table(header, body)
        (out / "results.md").write_text(f"# {plan['name']}\n\n{table}\n")
        with (out / "results.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(body)
        run.write_json("results.json", {"rows": rows, "provenance": prov})
        figures = _figures(rows, out)
        done = sum((store / s["dir"] / "DONE").exists() for s in plan["stages"])
        images = "".join(
            f'<figure><img src="data:image/png;base64,{base64.b64encode((out / f).read_bytes()).decode()}">'
            f"<figcaption>{html.escape(f)}</figcaption></figure>" for f in figures)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(f'{v:.1f}' if isinstance(v, float) else str(v))}</td>"
                                         for v in row) + "</tr>" for row in body)
        files = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(str(f['path']))}</td>"
                        f"<td><code>{f['sha256']}</code></td></tr>" for n, f in prov["data_files"].items())
        versions = html.escape(", ".join(f"{k} {v}" for k, v in prov["versions"].items()))
        (out / "report.html").write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(plan['name'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>"
            f"<h1>clinic experiment: {html.escape(plan['name'])}</h1>"
            f"<p>model <b>{html.escape(plan['model'])}</b>; {done}/{len(plan['stages'])} stages finished; "
            f"judges: {html.escape(', '.join(prov['judges']))}</p>"
            f"<h2>Results</h2><table><tr>{head}</tr>{cells}</table>"
            f"<h2>Figures</h2>{images or '<p>(no fine-tuned runs to plot yet)</p>'}"
            f"<h2>Provenance</h2><p>{versions}</p><table><tr><th>dataset</th><th>file</th><th>sha256</th></tr>{files}"
            "</table></body></html>\n")
    shutil.copyfile(out_dir / "results.md", root / "results.md")
    print(f"report: {out_dir / 'report.html'} ({len(rows)} evaluated models)")
    return out_dir
