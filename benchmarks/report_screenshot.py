"""A headless-browser screenshot of an experiment's report.html: what a person sees first.

    python benchmarks/report_screenshot.py results/adaptive-smollm2 docs/figures/report-first-screen.png

Writes the report of the results folder into a temporary folder (`clinic report`), opens it in
headless Chromium (Debian's `chromium`; `apt-get install chromium` where it is missing) at
1280 x 900, and saves the screenshot. Prints the path and the page's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from clinic.report.tables import write_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder (plan.json, experiment.yaml)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--size", default="1280,900", help="window size WIDTH,HEIGHT")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("report_screenshot: error: no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "exp"
        root.mkdir()
        plan = json.loads((args.results / "plan.json").read_text())
        plan["store"] = str((args.results / plan["store"]).resolve())  # read the committed stages in place
        (root / "plan.json").write_text(json.dumps(plan))
        report = write_report(root, Path(tmp) / "report") / "report.html"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, *FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={args.size}",
                        f"--screenshot={args.out.resolve()}", report.as_uri()], check=True, capture_output=True,
                       timeout=120)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KiB), window {args.size}")
    return args.out


if __name__ == "__main__":
    main()
