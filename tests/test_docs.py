"""The README stays short, every relative link in it and in docs/ resolves, and the text speaks to a user."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results" / "README.md"]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def test_the_readme_is_at_most_300_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_speaks_of_issues_sessions_or_changes(page):
    text = page.read_text(encoding="utf-8")
    words = re.findall(r"(?i)\bthe issue'?s?\b|\bthis session\b|\bbefore this change\b|\buntil this change\b", text)
    assert not words, f"{page.relative_to(ROOT)}: {words}"


def test_every_results_entry_is_in_the_results_index():
    index = (ROOT / "benchmarks" / "results" / "README.md").read_text(encoding="utf-8")
    entries = [p.name for p in (ROOT / "benchmarks" / "results").iterdir() if p.name != "README.md"]
    unlisted = [name for name in entries
                if f"`{name}`" not in index and f"`{name}/`" not in index
                and not any(re.fullmatch(pattern.replace("*", ".*"), name)
                            for pattern in re.findall(r"`([^`]*\*[^`]*)`", index))]
    assert not unlisted, f"results without a line in benchmarks/results/README.md: {unlisted}"
