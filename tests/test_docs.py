"""The README is a front door and docs/ holds the reference: the README stays short and keeps the two commands,
every relative link and anchor in the README, docs/ and benchmarks/RESULTS.md leads somewhere, and every results
file is cited by a results page while every results file a page cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
PAGES = [README, RESULTS_MD, *sorted((ROOT / "docs").rglob("*.md"))]
RESULT_PAGES = [RESULTS_MD, *sorted((ROOT / "docs" / "results").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            out.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return out


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    assert "bash scripts/demo.sh\n" in blocks and "bash scripts/test.sh\n" in blocks  # .ci/run calls the second
    for page in ("training", "serving", "scaling-out", "formats", "benchmarks"):
        assert f"(docs/{page}.md)" in text, page


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_and_anchors_resolve(page):
    broken = []
    for target, anchor in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}#{anchor}")
    assert broken == []


def test_every_results_file_is_cited_and_every_citation_exists():
    text = "\n".join(p.read_text() for p in RESULT_PAGES)
    stems = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    uncited = sorted(s for s in stems if f"{s}.json" not in text and f"`{s}`" not in text)
    assert uncited == []
    cited = set(re.findall(r"\b([a-z0-9][a-z0-9_-]*)\.json", text))  # NAME.json is a placeholder
    assert sorted(cited - stems) == []
