"""The documents: README.md stays a short front door, docs/options.md is what the code generates,
and every relative link in README.md, docs/ and the reference runs' READMEs resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.harness import options

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
MAX_README_CHARS = 12_000
PAGES = sorted(
    [README, *(ROOT / "docs").glob("*.md"), *(ROOT / "reports/reference").rglob("README.md")]
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a '#' there is no heading, a link no link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces
    to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(page.read_text()), flags=re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page.read_text())) if not re.match(r"\w+:", t)]


def test_the_readme_is_at_most_12000_characters():
    chars = len(README.read_text(encoding="utf-8"))
    assert chars <= MAX_README_CHARS, f"README.md has {chars} characters: move detail to docs/"


def test_docs_options_is_what_the_code_generates():
    page = ROOT / "docs" / "options.md"
    assert page.read_text() == options.markdown(), (
        "docs/options.md is stale: python -m bench.harness.options > docs/options.md"
    )


def test_every_option_is_on_the_options_page():
    text = options.markdown()
    for opt in options.OPTIONS:
        assert f"`{opt.flag} " in text and f"`{opt.env}`" in text, opt.flag


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert links(page) or page != README
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert resolved.suffix == ".md", f"{page.name}: {target}: an anchor into a non-page"
            assert anchor in anchors(resolved), f"{page.name}: {target}: no such heading"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README)}
    for page in (ROOT / "docs").glob("*.md"):
        assert page.resolve() in linked, f"README.md does not link {page.name}"


def test_slugs_follow_github():
    assert slug("Stiff ODEs: Jacobi-Newton (workload `ode`)") == (
        "stiff-odes-jacobi-newton-workload-ode"
    )
    assert slug("The interface in ten lines") == "the-interface-in-ten-lines"
    assert slug("Speed goals (a)-(d)") == "speed-goals-a-d"


def test_the_readmes_own_model_example_is_the_file_a_test_runs():
    """tests/test_harness.py sweeps examples/my_model.py in both backends; the README shows it."""
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "my_model.py").read_text()
    shown = readme.split("## Your own model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "def build(" in shown and shown in example
