"""Every relative link in README.md and docs/**/*.md points to a file or folder that exists and, when
it names an anchor (``page.md#section``), to a heading of that page.

Links are read with markdown-it-py (a CommonMark parser), so link-like text inside code blocks and
inline code (``a[l,h](x)``) is not taken for a link. Anchors follow GitHub's heading slugs: lower
case, punctuation dropped, spaces turned into hyphens, repeated slugs numbered ``-1``, ``-2`` ….
External links (``http:``, ``mailto:`` …) are not checked: the check runs offline.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
PARSER = MarkdownIt("commonmark").enable("table")


def _tokens(path: Path):
    return PARSER.parse(path.read_text(encoding="utf-8"))


def _inline_children(tokens):
    for token in tokens:
        if token.type == "inline":
            yield from token.children or ()


def links(path: Path) -> list[str]:
    """The targets of the page's links and images, in order."""
    found = []
    for child in _inline_children(_tokens(path)):
        if child.type == "link_open":
            found.append(child.attrGet("href"))
        elif child.type == "image":
            found.append(child.attrGet("src"))
    return found


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading's text: lower case, characters other than word characters,
    spaces and hyphens dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    tokens = _tokens(path)
    seen: Counter[str] = Counter()
    result = set()
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type != "heading_open":
            continue
        text = "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))
        slug = github_slug(text)
        result.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    # explicit anchors: <a id="..."> / <a name="...">
    result.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return frozenset(result)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(page: Path) -> list[str]:
    """The page's relative links whose file, folder or anchor does not exist, as messages."""
    problems = []
    for href in links(page):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue  # external
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not target.exists():
            problems.append(f"{href}: no such file {_shown(target)}")
        elif parts.fragment and target.suffix == ".md" and unquote(parts.fragment) not in anchors(target):
            problems.append(f"{href}: no heading with anchor #{parts.fragment} in {_shown(target)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == []


def test_the_check_sees_links_and_skips_code(tmp_path: Path):
    """The checker itself: a missing file and a missing anchor are reported, links inside code are
    not links, and existing targets (file, folder, heading) pass."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "other.md").write_text("# Title\n\n## 7.2 Harmful score: `HS` → n\n\n## Repeat\n\n## Repeat\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [folder](sub/) [anchor](other.md#72-harmful-score-hs--n) [second](other.md#repeat-1)\n"
        "[self](#local) [web](https://example.org/missing.md) [explicit](#point-4)\n\n"
        '4. <a id="point-4"></a>a list item with an explicit anchor\n\n'
        "## Local\n\n"
        "    a[l,h](x) in an indented code block\n\n"
        "`b[0](y)` inline code, then [gone](missing.md) and [bad anchor](other.md#nope)\n"
    )
    found = broken_links(page)
    assert len(found) == 2, found
    assert found[0].startswith("missing.md: no such file")
    assert found[1].startswith("other.md#nope: no heading")


def test_pages_are_found():
    """The parametrised test above must not pass by checking nothing."""
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/README.md", "docs/reference/algorithms.md", "docs/methods/surgery.md"} <= names
    assert sum(len(links(p)) for p in PAGES) > 50
