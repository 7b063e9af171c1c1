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
