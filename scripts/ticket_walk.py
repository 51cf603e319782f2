"""A new user's walk from a raw ticket export to an exported model, run for real and written down.

    python scripts/ticket_walk.py --work /tmp/walk --out docs/walkthrough.md

Writes a synthetic support-ticket export as spreadsheets save one (UTF-8 with a byte-order mark, CRLF
line ends, tickets with no subject or body, queue names in two spellings, a few tickets in two
queues), then runs what the README tells a user to run, each command in a fresh process from
``--work``: a first check of a hand-written config, the starter, the check of its grid, the grid
itself (Snakemake in ``--work/runs/tickets``), labelling new tickets with the chosen cell, and the
export of it, loaded again with ``transformers.pipeline`` where it is a classifier. Every command's
output and wall time go into ``--out`` (Markdown), with the machine it ran on and the checkout's
``git status`` afterwards.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUEUES = {
    "Billing": ["invoice", "refund", "charged twice", "payment failed", "credit card", "VAT number", "receipt"],
    "Network": ["VPN drops", "wifi is slow", "cannot reach the server", "DNS error", "packet loss", "router"],
    "Accounts": ["password reset", "locked out", "two-factor code", "new user account", "permissions", "login"],
    "Hardware": ["laptop screen", "keyboard broken", "printer jams", "docking station", "battery", "monitor"],
}
FILLER = ["since this morning", "for the whole team", "again after the update", "on the second floor",
          "please help urgently", "it worked yesterday", "for a customer call at 3pm", "no idea why"]


def tickets(n: int, seed: int, labelled: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        queue = rng.choice(list(QUEUES))
        phrase, other = rng.sample(QUEUES[queue], 2)
        row = {"id": f"T{seed}{i:04d}", "subject": f"{phrase} {rng.choice(FILLER)}",
               "body": f"Hello, {other} and {phrase} {rng.choice(FILLER)}. {rng.choice(FILLER).capitalize()}."}
        if labelled:
            if i % 23 == 5:  # a ticket in two queues
                second = rng.choice([q for q in QUEUES if q != queue])
                row["body"] += f" Also {rng.choice(QUEUES[second])}."
                queue = f"{queue},{second}"
            elif i % 11 == 3:  # the same queue spelt in lower case by another team
                queue = queue.lower()
            if i % 37 == 7:  # an empty ticket (no subject, no body)
                row["subject"] = row["body"] = ""
            row["queue"] = queue
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Excel's "CSV UTF-8": a byte-order mark, CRLF, fields quoted where needed."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))


def run(cmd: list[str], cwd: Path, log: list[str], tail: int = 40) -> tuple[int, float, str]:
    """Run one command as a user would, record it (command, seconds, the end of its output)."""
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.monotonic() - start
    shown = " ".join(c if re.fullmatch(r"[\w./:=,-]+", c) else repr(c) for c in cmd).replace(sys.executable, "python")
    out = (proc.stdout + proc.stderr).strip().splitlines()
    out = [line for line in out if not line.startswith(("[transformers]", "Key ", "---", "lm_head", "score.weight",
                                                          "Notes:", "- UNEXPECTED", "- MISSING"))]
    log += [f"```console\n$ {shown}   # {seconds:.0f} s, exit {proc.returncode}",
            *(["..."] if len(out) > tail else []), *out[-tail:], "```", ""]
    return proc.returncode, seconds, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=400, help="labelled tickets")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_csv(work / "tickets.csv", tickets(args.n, 1))
    write_csv(work / "new_tickets.csv", tickets(20, 2, labelled=False))
    (work / "first.yaml").write_text("datasets:\n  tickets:\n    source: files\n    path: tickets.csv\n"
                                     "    text_columns: [subject, body]\n    label_column: queue\n"
                                     "approaches:\n  tfidf: {}\n")
    py = sys.executable
    flags = re.findall(r"avx512_bf16|amx_bf16|avx512f|avx2", Path("/proc/cpuinfo").read_text())
    log = ["# Walkthrough: from a ticket export to an exported model", "",
           f"Generated by `python scripts/ticket_walk.py` on {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores ({', '.join(sorted(set(flags))) or 'no AVX flags'}), no GPU; "
           f"{args.n} synthetic tickets (UTF-8 with a byte-order mark, CRLF, empty tickets, queue names in two "
           "spellings, some tickets in two queues) and 20 new ones. Each block is what the user runs and sees "
           "(the end of the output), with its wall time.", "",
           "## 1. A first config, checked before any job", ""]
    run([py, "-m", "clsbench.check", "first.yaml"], work, log)
    log += ["## 2. The starter writes a grid with every fix, and checks it", ""]
    run([py, "-m", "clsbench.starter", "--data", "tickets.csv", "--out", "tickets.yaml", "--force"], work, log)
    log += ["The config it wrote:", "", "```yaml", *(work / "tickets.yaml").read_text().splitlines(), "```", "",
            "## 3. The grid", ""]
    code, seconds, _ = run([py, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile",
                            "tickets.yaml", "--directory", "runs/tickets", "--cores", "2", "--resources", "gpu=1",
                            "--quiet", "rules"], work, log, tail=25)
    decision = work / "runs/tickets/reports/tables/decision.md"
    if decision.exists():
        log += ["The decision (runs/tickets/reports/tables/decision.md):", "", *decision.read_text().splitlines(), ""]
    best = "runs/tickets/results/tickets/best.json"
    log += ["## 4. Label new tickets with the chosen cell", ""]
    run([py, "-m", "clsbench.apply", "--best", best, "--input", "new_tickets.csv", "--output", "labelled.csv",
         "--force"], work, log)
    if (work / "labelled.csv").exists():
        log += ["```console", "$ head -4 labelled.csv", *(work / "labelled.csv").read_text().splitlines()[:4], "```", ""]
    log += ["## 5. Export it", ""]
    code, _, said = run([py, "-m", "clsbench.export", "--best", best, "--out", "exported"], work, log)
    if code == 0 and (work / "exported" / "config.json").exists():
        probe = ("from transformers import pipeline; p = pipeline('text-classification', model='exported'); "
                 "print(p(['VPN drops since this morning', 'refund for an invoice charged twice']))")
        run([py, "-c", probe], work, log, tail=5)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    log += ["## 6. The checkout afterwards", "", "```console", "$ git status --porcelain",
            *(status.splitlines() or ["(nothing: the run wrote only under the work folder)"]), "```", ""]
    args.out.write_text("\n".join(log))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
