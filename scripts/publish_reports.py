"""Copy a run's rendered reports into the checkout's committed reports/ (the only way a run's
figures reach git: a run writes into its own working directory, runs/default/ for one started here).

    python scripts/publish_reports.py runs/default                  # the default grid -> reports/
    python scripts/publish_reports.py runs/claims --to reports/claims

Copies <run>/reports/tables/*, <run>/reports/figures/*.png and <run>/results/<dataset>/best.json
(as best/<dataset>.json) over the files of the same name; nothing else is touched or deleted (the
hand-written README.md of a reports folder stays as it is). Prints what it copied.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def publish(run: Path, to: Path) -> list[Path]:
    """Copy the run's tables, PNG figures and best.json files into ``to``; returns the files written."""
    if not (run / "reports" / "tables").is_dir():
        raise SystemExit(f"error: {run}/reports/tables not found: is {run} a finished run's working directory?")
    pairs = [(f, to / "tables" / f.name) for f in sorted((run / "reports" / "tables").iterdir()) if f.is_file()]
    pairs += [(f, to / "figures" / f.name) for f in sorted((run / "reports" / "figures").glob("*.png"))]
    pairs += [(f, to / "best" / f"{f.parent.name}.json") for f in sorted((run / "results").glob("*/best.json"))]
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)  # atomic: a killed copy leaves the committed file as it was
    return [target for _, target in pairs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run's working directory (runs/default for a run started here)")
    parser.add_argument("--to", type=Path, default=REPO / "reports", help="default: the checkout's reports/")
    args = parser.parse_args(argv)
    written = publish(args.run, args.to)
    for path in written:
        print(path)
    print(f"{len(written)} file(s) copied from {args.run} into {args.to}", file=sys.stderr)


if __name__ == "__main__":
    main()
