"""``report.html``: one self-contained page that leads with one screen (each defence's headline
numbers against SFT's, a figure and a short table), then the details (every row, every attack,
the figures, the provenance), each wide table in its own horizontal scroll box."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .tables import ADAPTIVE_NOTE, TABLE_NOTE, adaptive_tables, format_delta, format_interval

_HS = re.compile(r"^HS (?P<judge>\S+) \[(?P<set>[^\]]+)\]$")
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}.wide{overflow-x:auto;max-width:100%}"
         ".glance td,.glance th{font-size:14px;padding:4px 8px}img{max-width:100%}figure{margin:0}"
         "details{margin:1em 0}summary{font-weight:bold;cursor:pointer}")


def shown_judges(rows: list[dict]) -> list[str]:
    """Every judge a harmful-score column of the tables names, in column order."""
    found = (_HS.match(k) for r in rows for k in r)
    return list(dict.fromkeys(m["judge"] for m in found if m))


def headline_column(rows: list[dict]) -> str | None:
    """The harmful-score column the first screen shows: harm-ce's (the default judge) when the
    tables have it, else the first one."""
    columns = list(dict.fromkeys(k for r in rows for k in r if _HS.match(k)))
    preferred = [c for c in columns if _HS.match(c)["judge"] == "harm-ce"]
    return (preferred or columns or [None])[0]


def _defence(entry: dict) -> str:
    name = f"{entry['align']} → {entry['finetune']}"
    return f"{name} + {entry['repair']}" if entry.get("repair", "none") not in ("none", None, "") else name


def glance_adaptive(adaptive: list[dict], column: str) -> tuple[list[str], list[list]]:
    """Per defence: the fixed attack's score, the worst case under the guard (with its attack), and
    the worst case's difference from SFT's worst case, for one harmful-score column."""
    header = ["defence", "task", f"fixed attack, {column} % [95 % CI]", "worst case under the guard % [95 % CI]",
              "worst attack", "Δ worst vs SFT [95 % CI], McNemar p", "verdict"]
    body = []
    for e in (e for e in adaptive if e["column"] == column):
        fixed, worst = e.get("fixed"), e["worst"]
        body.append([_defence(e), e["task"],
                     format_interval(fixed["score"], fixed["ci95"], fixed["n"]) if fixed else "not evaluated",
                     format_interval(worst["score"], worst["ci95"], worst["n"]), worst["attack"],
                     format_delta(e["Δworst vs SFT"]) if "Δworst vs SFT" in e else "(SFT)", e["verdict"]])
    return header, body


def glance_plain(rows: list[dict], column: str) -> tuple[list[str], list[list]]:
    """Per model and poison ratio: the headline harmful score, its difference from SFT's, and the
    fine-tune accuracy; base and aligned models first."""
    from .results import delta_column

    fa = next((k for r in rows for k in r if k.startswith("FA ") and not k.endswith(("n", "ci95"))), None)
    header = ["model", "p", f"{column} % [95 % CI]", "Δ vs SFT [95 % CI], McNemar p"] + ([f"{fa} %"] if fa else [])
    body = []
    for r in rows:
        if r.get(column) is None or r.get("attack", "") != r.get("fixed attack", ""):
            continue
        model = r["stage"] if r["stage"] in ("base",) else (
            f"{r['align']} (aligned)" if r["stage"] == "aligned" else _defence(r))
        delta = r.get(delta_column(column))
        body.append([model, "" if r.get("p") is None else f"{r['p']:g}",
                     format_interval(r[column], r[f"{column} ci95"], r[f"{column} n"]),
                     format_delta(delta) if delta else ("" if r["stage"] in ("base", "aligned") else "(SFT)"),
                     *([f"{r[fa]:.1f}" if r.get(fa) is not None else ""] if fa else [])])
    return header, body


def table(header: list[str], body: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(f'{v:.1f}' if isinstance(v, float) else str(v))}</td>"
                                     for v in row) + "</tr>" for row in body)
    return f"<div class='wide'><table class='{cls}'><tr>{head}</tr>{cells}</table></div>"


def _image(out: Path, name: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}"><figcaption>{html.escape(name)}</figcaption></figure>'


def report_html(plan: dict, rows: list[dict], adaptive: list[dict], prov: dict, figures: list[str], out: Path,
                done: int, full: tuple[list[str], list[list]]) -> str:
    """The page: the first screen, then the details."""
    judges = shown_judges(rows)
    column = headline_column(rows)
    if adaptive and column is not None and any(e["column"] == column for e in adaptive):
        header, body = glance_adaptive(adaptive, column)
        figure = "adaptive.png"
        lead = (f"Each defence's worst case over its attack space under the capability guard ({adaptive[0]['guard']}), "
                f"against SFT's worst case on the same prompts; the figure shows every attack (x: fine-tune accuracy, "
                f"y: {column}; square: the fixed attack, ring: the worst case under the guard).")
    else:
        header, body = glance_plain(rows, column) if column else ([], [])
        figure = "hs_vs_p.png"
        lead = f"Every model's {column} against the poison ratio p, and its difference from SFT's at the same p."
    glance = (f"<h2>At a glance: {html.escape(column or 'no harmful score yet')}</h2><p>{html.escape(lead)}</p>"
              + (_image(out, figure) if figure in figures else "") + table(header, body, "glance"))
    details = (f"<details><summary>Every evaluated model ({len(rows)} rows)</summary>{table(*full)}"
               f"<p>{html.escape(TABLE_NOTE)}</p></details>")
    if adaptive:
        details += ("<details><summary>The adaptive attacker, every judge</summary>"
                    + "".join(f"<h3>{html.escape(c)}</h3>{table(h, b)}" for c, h, b in adaptive_tables(adaptive))
                    + f"<p>{html.escape(ADAPTIVE_NOTE)}</p></details>")
    images = "".join(_image(out, f) for f in figures)
    files = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(str(f['path']))}</td>"
                    f"<td><code>{f['sha256']}</code></td></tr>" for n, f in prov["data_files"].items())
    versions = html.escape(", ".join(f"{k} {v}" for k, v in prov["versions"].items()))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(plan['name'])}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>clinic experiment: {html.escape(plan['name'])}</h1>"
            f"<p>model <b>{html.escape(plan['model'])}</b>; {done}/{len(plan['stages'])} stages finished; "
            f"judges in the tables: {html.escape(', '.join(judges) or 'none yet')}</p>"
            f"{glance}<h2>Details</h2>{details}"
            f"<details><summary>Figures</summary>{images or '<p>(no fine-tuned runs to plot yet)</p>'}</details>"
            f"<details><summary>Provenance</summary><p>{versions}</p><div class='wide'><table><tr><th>dataset</th>"
            f"<th>file</th><th>sha256</th></tr>{files}</table></div></details></body></html>\n")
