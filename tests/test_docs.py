"""Figures in the docs come from the committed tables: a figure found in no committed table fails
here, so a rerun that changes a table cannot leave a stale number in a README. (A screen, not a
proof: a wrong figure that happens to equal some other number of the tables passes.)"""
import re
import subprocess
import sys

import pytest
from conftest import REPO

FIGURE = re.compile(r"(?<![\d.])[01]\.\d{3}(?!\d)")  # an F1, ECE or share with three decimals
HISTORY = re.compile(r"\bbefore\b|\bearlier\b|\bgit [0-9a-f]{7}", re.I)  # figures of earlier code, by its commit


def table_figures() -> set[str]:
    """Every number of the committed tables (reports/**, README files excepted), at three decimals."""
    found: set[str] = set()
    for path in (REPO / "reports").rglob("*"):
        if path.suffix in (".md", ".csv", ".json", ".tex") and path.name != "README.md":
            text = path.read_text()
            found |= set(FIGURE.findall(text))
            found |= {f"{float(v):.3f}" for v in re.findall(r"(?<![\d.])[01]\.\d{4,}", text)}
    return found


def current_figures(text: str) -> list[str]:
    """Every figure that is meant to be current: not in a sentence about earlier code, not in a
    Markdown table row or column that says 'before' (or names the earlier commit)."""
    out, header, paragraph = [], None, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = line.strip("|").split("|")
            if header is None:
                header = cells
            elif not any(HISTORY.search(c) for c in cells):
                out += [f for head, cell in zip(header, cells) if not HISTORY.search(head) for f in FIGURE.findall(cell)]
            continue
        header = None
        if line.strip():
            paragraph.append(line)
            continue
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(*])", " ".join(paragraph)):
            if not HISTORY.search(sentence):
                out += FIGURE.findall(sentence)
        paragraph = []
    return out


@pytest.mark.parametrize("doc", ["README.md", "reports/README.md"])
def test_every_figure_in_a_readme_is_in_a_committed_table(doc):
    known = table_figures()
    stale = [f for f in current_figures((REPO / doc).read_text()) if f not in known]
    assert not stale, f"{doc}: figures in no committed table: {stale}"


def test_the_gpu_guide_table_is_the_papers_measurements():
    table = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_table.py")], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert table in (REPO / "docs" / "gpu.md").read_text()
