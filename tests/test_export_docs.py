"""docs/export.md stays true to the code: its command lines parse as the CLI would run them, it
documents every export format with the file name a deployment gets, and the onnxruntime version it
gives for ORT_*_NUM_THREADS is the one the exports use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_help_examples import parse
from tuner.results import export

DOC = Path(__file__).resolve().parent.parent / "docs" / "export.md"


def doc_examples() -> list[str]:
    """Every placetune command line in the page's bash blocks (as test_help_examples reads README.md)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.search(r"(?:^|\s|/)(placetune (?!\[)\S.*)", "" if line.lstrip().startswith("#") else line)
            if found:
                lines.append(found.group(1).strip())
    return lines


def test_the_page_has_examples_of_every_kind():
    assert len(doc_examples()) >= 6 and any("--format triton" in e for e in doc_examples())


@pytest.mark.parametrize("example", doc_examples())
def test_an_example_parses_as_written(example):
    parse(example)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_every_format_is_documented_with_its_deployment_file(fmt):
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `") and f"`{fmt}`" in line]
    assert rows, f"docs/export.md has no table row for --format {fmt}"
    assert any(f"`NAME{export.format_of(fmt).suffix}`" in row for row in rows), rows


def test_the_documented_onnxruntime_version_is_the_one_the_exports_use():
    since = ".".join(map(str, export.ORT_THREAD_ENV_SINCE))
    assert f"is {since} or later" in DOC.read_text()
