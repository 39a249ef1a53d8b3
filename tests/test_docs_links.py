"""Every relative link and picture in the README, CONTRIBUTING, bench/README.md and docs/*.md resolves: the file
exists inside the repository, and an anchor (``page.md#section``) names a heading of that page. Links to
the web are not fetched. The checker is also run on small broken pages, so that it can be seen to fail."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto: ...


def doc_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "bench" / "README.md"]
    return [f for f in files if f.exists()] + sorted((REPO / "docs").glob("*.md"))


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (a link inside code is an example, not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def targets(text: str) -> list[str]:
    text = prose(text)
    return INLINE.findall(text) + REFERENCE.findall(text) + HTML.findall(text)


def anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub makes them: lower case, punctuation dropped, spaces to hyphens, repeats -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", markdown)):
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """What in ``page`` does not resolve, one line each (empty: every relative link and picture resolves)."""
    problems = []
    text = page.read_text(encoding="utf-8")
    for target in targets(text):
        if EXTERNAL.match(target) or target.startswith("//"):
            continue
        path_part, _, fragment = target.partition("#")
        path_part = path_part.split("?")[0]
        dest = (page.parent / path_part).resolve() if path_part else page.resolve()
        if root.resolve() not in (dest, *dest.parents):
            problems.append(f"{page.name}: {target} points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{page.name}: {target} does not exist")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{page.name}: {target} names no heading of {dest.name}")
    return problems


def test_the_pages_exist():
    names = {f.name for f in (REPO / "docs").glob("*.md")}
    assert {"plugin.md", "cli.md", "official-weights.md", "pacs.md", "serving.md", "training.md", "demo-model.md",
            "performance.md", "development.md"} <= names
    assert (REPO / "README.md").stat().st_size <= 12 * 1024  # a newcomer's five minutes


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_picture_resolves(page):
    assert broken_links(page) == []


def test_the_checker_finds_what_is_broken(tmp_path):
    (tmp_path / "docs" / "img").mkdir(parents=True)
    (tmp_path / "docs" / "img" / "shot.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## The command line: `hlip`\n")
    good = tmp_path / "docs" / "good.md"
    good.write_text("# Good\n\n![a picture](img/shot.png) and [a page](other.md#the-command-line-hlip),\n"
                    "[the top](#good), [the web](https://example.org/x.md), `[code](nowhere.md)`\n\n"
                    "```\n[in a code block](missing.md)\n```\n\n[ref]: other.md\n")
    assert broken_links(good, tmp_path) == []
    bad = tmp_path / "docs" / "bad.md"
    bad.write_text("# Bad\n\n![gone](img/gone.png) [no page](missing.md) [no heading](other.md#nowhere)\n"
                   "[outside](../../elsewhere.md) <img src=\"img/also-gone.png\"> [no anchor](#nope)\n\n"
                   "[ref]: missing-too.md\n")
    problems = "\n".join(broken_links(bad, tmp_path))
    for what in ("img/gone.png does not exist", "missing.md does not exist", "other.md#nowhere names no heading",
                 "../../elsewhere.md points outside", "img/also-gone.png does not exist", "#nope names no heading",
                 "missing-too.md does not exist"):
        assert what in problems, problems
    assert len(broken_links(bad, tmp_path)) == 7
