"""Every link between the repository's Markdown documents leads somewhere: the file exists and,
where the link names a heading (`#anchor`), that document has the heading, as GitHub spells its
anchors. Documents move (the README's performance log lives in docs/); links must follow."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_FOLDERS = {".venv", "var", "node_modules", ".git", ".pytest_cache"}
# [text](target): not an image's or a URL's, and not inside inline code
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCED = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
# inline code may wrap onto the next line of its paragraph, never across a blank line
_INLINE_CODE = re.compile(r"`(?:[^`\n]|\n(?!\s*\n))*`")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def documents() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.md")
                  if not SKIPPED_FOLDERS.intersection(path.relative_to(ROOT).parts))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores
    kept), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(document: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCED.sub("", document.read_text())):
        base = anchor(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def links_of(document: Path) -> list[str]:
    prose = _INLINE_CODE.sub("", _FENCED.sub("", document.read_text()))
    return [target for target in _LINK.findall(prose)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not ours


def test_there_are_documents_with_links_to_check():
    assert ROOT / "README.md" in documents()
    assert len(links_of(ROOT / "README.md")) > 10


def test_the_anchor_rule_matches_githubs():
    assert anchor("Performance (measured, not promised)") == "performance-measured-not-promised"
    assert anchor("What bounds placement now, and what did not move it (2026-12-05)") == \
        "what-bounds-placement-now-and-what-did-not-move-it-2026-12-05"
    assert anchor("`make run`: the stack") == "make-run-the-stack"


def test_headings_with_code_and_links_wrapped_in_code_are_read_as_github_reads_them(tmp_path):
    document = tmp_path / "page.md"
    document.write_text("# What `make k8s-validate` checks\n\n```sh\n# not a heading\n```\n\n## Retries\n\n"
                        "## Retries\n\nA `span that\nwraps` then [a link](#retries-1) and `[not one](#x)`.\n")
    assert anchors_of(document) == {"what-make-k8s-validate-checks", "retries", "retries-1"}
    assert links_of(document) == ["#retries-1"]


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_leads_to_a_file_and_heading_that_exist(document):
    broken = []
    for target in links_of(document):
        path, _, fragment = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors_of(linked):
            broken.append(f"{target}: no such heading")
    assert broken == []
