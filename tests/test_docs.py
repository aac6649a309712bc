"""Every repository path a docstring or comment under src/ cites exists, and every document cited by
name is one of this repository's (``docs/methods.md section 3``: the file, and its section 3)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "adakd"
#: Top-level folders whose paths the sources cite.
CITED_FOLDERS = ("docs", "configs", "scripts", "benchmarks", "sweeps", "tests", "experiments", "papers", "results",
                 "studies")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*)" % "|".join(CITED_FOLDERS))
BARE_MD = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
SECTION = re.compile(r"(docs/[\w-]+\.md),? section (\d+)")
#: Files adakd writes (named in docstrings as outputs, not cited as documents).
WRITTEN = {"results.md", "tune_report.md"}


def citations() -> list[tuple[str, str]]:
    """(file:line, cited path) of every repository path in the sources' text."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in PATH.finditer(line):
                out.append((f"{path.relative_to(ROOT)}:{number}", match.group(1).rstrip(".*")))
    return out


def test_the_scan_finds_the_citations_it_checks():
    cited = {c for _, c in citations()}
    assert {"docs/methods.md", "docs/recipes.md", "docs/vision.md", "configs/fashion_mnist/kd.yaml"} <= cited


def test_every_cited_repository_path_exists():
    missing = [f"{where}: {cited}" for where, cited in citations() if not (ROOT / cited).exists()
               and not any(part.split(".")[0].isupper() for part in Path(cited).parts)  # studies/NAME/...: a pattern
               and not (cited.startswith("studies/") and "runs" in Path(cited).parts)]  # run output, git-ignored
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_documents_are_cited_by_their_repository_path():
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            bare += [f"{path.relative_to(ROOT)}:{number}: {m.group(1)}" for m in BARE_MD.finditer(line)
                     if m.group(1) not in WRITTEN]
    assert not bare, "a document named without its path (e.g. docs/methods.md):\n" + "\n".join(bare)


def test_cited_sections_exist():
    cited = {(m.group(1), m.group(2)) for path in SRC.rglob("*.py") for m in SECTION.finditer(
        " ".join(path.read_text().split()))}
    assert ("docs/methods.md", "1") in cited
    missing = [f"{doc} section {n}" for doc, n in sorted(cited)
               if not re.search(rf"^## {n}\. ", (ROOT / doc).read_text(), flags=re.M)]
    assert not missing, "no such section: " + ", ".join(missing)
