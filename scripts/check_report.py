#!/usr/bin/env python3
"""Build the Snakemake HTML report and check that a real browser renders it.

Runs `snakemake --report`, opens the file in headless Chromium (Debian's `chromium`), checks the
rendered DOM names the report's categories and figures, and saves a screenshot.

    python scripts/check_report.py [--report reports/report.html] [--screenshot reports/report.png]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000", "--virtual-time-budget=15000"]
EXPECTED = ["1. Decision", "Tables", "Figures", "Calibration", "Training curves"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(html: Path, screenshot: Path) -> str:
    """The DOM after the page's scripts ran; writes a PNG screenshot."""
    browser = chromium()
    if browser is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([*common, "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
        subprocess.run([*common, f"--screenshot={screenshot.resolve()}", html.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    return dom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="reports/report.html")
    parser.add_argument("--screenshot", default="reports/report.png")
    parser.add_argument("--directory", default=".", help="the workflow's working directory")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    report = Path(args.directory) / args.report
    report.parent.mkdir(parents=True, exist_ok=True)
    (Path(args.directory) / args.screenshot).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory",
                    args.directory, "--report", args.report], check=True, capture_output=True)
    dom = render(report, Path(args.directory) / args.screenshot)
    missing = [word for word in EXPECTED if word not in dom]
    size = (Path(args.directory) / args.screenshot).stat().st_size
    print(f"report {report} ({report.stat().st_size / 1e6:.1f} MB): rendered DOM {len(dom)} chars, "
          f"screenshot {args.screenshot} ({size / 1e3:.0f} KB), categories found: "
          f"{[w for w in EXPECTED if w in dom]}")
    if missing:
        raise SystemExit(f"the rendered report lacks {missing}")


if __name__ == "__main__":
    main()
