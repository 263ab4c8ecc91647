"""Claims of the README that must hold on any machine and stay true as the project changes."""

import re
from pathlib import Path

from wpat.configuration.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_document_types_a_test_count():
    """A typed count goes stale with the next test; `pytest --collect-only -q` prints the real one."""
    for path in DOCS:
        counts = re.findall(r"\b\d[\d,]* tests\b", path.read_text())
        assert not counts, f"{path.name}: {counts}"


def test_the_main_jobs_thread_count_is_the_one_the_readme_states():
    """Its figures repeat exactly only at the same thread count, so the README names it."""
    stated = re.search(r"with two torch\s+threads \(`run.threads: (\d+)` in the preset\)", (ROOT / "README.md").read_text())
    assert stated and int(stated.group(1)) == load_config("fmnist-smallcnn-linf").run.threads == 2
