"""Every relative link in the docs resolves: the file exists and, for `file.md#anchor`, so does the heading.

The results page (docs/benchmarks.md) points into benchmarks/results/ and the run READMEs point back; a run folder
renamed or a section retitled would otherwise leave links that go nowhere. Also checked: repository paths under
benchmarks/results/ named in code spans of those files (the raw files a figure cites).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target); text may span lines
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
RESULTS_PATH = re.compile(r"^benchmarks/results/[A-Za-z0-9_.\-/]+$")


def doc_files() -> list[Path]:
    """The markdown files whose links are checked."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]
    files += sorted((ROOT / "benchmarks" / "results").rglob("README.md"))
    return [f for f in files if f.is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a file's headings make, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, text: str) -> list[str]:
    """Links in `text` (the content of `path`) that do not resolve, each as 'path: target (why)'."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(ROOT)}: {target} (no heading with that anchor)")
    return problems


def missing_results_paths(path: Path, text: str) -> list[str]:
    """benchmarks/results/... paths in code spans that do not exist (brace and glob patterns are not checked)."""
    return [
        f"{path.relative_to(ROOT)}: `{span}` (no such file)"
        for span in CODE_SPAN.findall(text)
        if RESULTS_PATH.match(span) and not (ROOT / span).exists()
    ]


def test_the_checker_finds_a_broken_link_and_a_missing_anchor() -> None:
    page = ROOT / "docs" / "benchmarks.md"
    text = (
        "[ok](../README.md) [gone](../no/such/file.md) ![img](img/none.png) [web](https://example.com)\n"
        "[bad anchor](benchmarks.md#no-such-heading) `[in code](nowhere.md)`\n"
        "`benchmarks/results/no-such-run/` `benchmarks/results/h100-campaign/call{1..24}/`\n"
    )
    assert broken_links(page, text) == [
        "docs/benchmarks.md: ../no/such/file.md (no such file)",
        "docs/benchmarks.md: img/none.png (no such file)",
        "docs/benchmarks.md: benchmarks.md#no-such-heading (no heading with that anchor)",
    ]
    assert missing_results_paths(page, text) == ["docs/benchmarks.md: `benchmarks/results/no-such-run/` (no such file)"]


def test_slugs_follow_github() -> None:
    assert slug("fp8: the agent's layers against torchao") == "fp8-the-agents-layers-against-torchao"
    assert slug("Solver scale (`benchmarks/solver_scale.py`)") == "solver-scale-benchmarkssolver_scalepy"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_every_relative_link_in_the_docs_resolves() -> None:
    files = doc_files()
    assert ROOT / "docs" / "benchmarks.md" in files
    problems = [p for f in files for p in broken_links(f, f.read_text(encoding="utf-8"))]
    assert problems == []


def test_every_results_path_the_docs_name_exists() -> None:
    problems = [p for f in doc_files() for p in missing_results_paths(f, f.read_text(encoding="utf-8"))]
    assert problems == []
