"""Every relative link in README.md, docs/*.md and experiments/README.md points to a file or folder
that exists, and a ``#anchor`` into a markdown file names one of its headings (GitHub's anchor for
a heading: lower case, punctuation dropped, spaces as hyphens, ``-1``, ``-2`` ... for repeats).
Links with a scheme (https:, mailto:) are not followed. No link is exempt."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def links(path: Path) -> list[str]:
    """Every link target in ``path``, outside code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links() -> list[tuple[str, str]]:
    return [(str(path.relative_to(ROOT)), target) for path in DOC_FILES if path.is_file()
            for target in links(path) if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]


def test_the_docs_have_links_to_check():
    assert len(relative_links()) >= 30, relative_links()


@pytest.mark.parametrize(("where", "target"), relative_links(), ids=[f"{w} -> {t}" for w, t in relative_links()])
def test_a_relative_link_resolves(where, target):
    source = ROOT / where
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / unquote(file_part)).resolve() if file_part else source
    assert dest.is_relative_to(ROOT), f"{where}: link to {target!r} leaves the repository"
    assert dest.exists(), f"{where}: link to {target!r}: {dest.relative_to(ROOT)} does not exist"
    if anchor and dest.is_file() and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{where}: link to {target!r}: no heading with anchor #{anchor} in {dest.name}"


@pytest.mark.parametrize(("heading", "anchor"), [
    ("How sure a result is", "how-sure-a-result-is"),
    ("Scale proof (16 cores)", "scale-proof-16-cores"),
    ("Results: the zoo (historical, 2026-11-22)", "results-the-zoo-historical-2026-11-22"),
    ("Search efficiency, replayed against oracles", "search-efficiency-replayed-against-oracles"),
    ("The `Fleet` seam", "the-fleet-seam"),
])
def test_anchors_are_githubs(tmp_path, heading, anchor):
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\n## {heading}\n")
    assert anchor in anchors(page)


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[there](missing.md) [here](#page) `[not a link](nowhere.md)`\n\n"
                    "```bash\necho [x](in-code.md)\n```\n")
    assert links(page) == ["missing.md", "#page"]
    assert "page" in anchors(page)
