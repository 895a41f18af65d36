"""Every example shown in a command's --help and in the shell blocks of README.md, docs/*.md and
experiments/README.md parses as written: the command exists, every option it uses exists and every
value has the option's type (click's own parser, ``make_context``, without running anything), so the
examples cannot drift from the options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer.main

from tuner.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
CLI = typer.main.get_command(app)


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    out = {}
    for name, cmd in group.commands.items():
        out[(*prefix, name)] = cmd
        if hasattr(cmd, "commands"):  # a group (typer >= 0.29 vendors click: no click.Group)
            out.update(_commands(cmd, (*prefix, name)))
    return out


COMMANDS = _commands(CLI)
PARSE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))


def help_examples() -> list[str]:
    """'$ placetune ...' in every command's help text."""
    return [m.group(1).strip() for cmd in COMMANDS.values()
            for m in re.finditer(r"\$ (placetune [^\n]+)", cmd.help or "")]


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]


def shell_examples(path: Path) -> list[str]:
    """Every placetune command line in a markdown file's shell blocks (bash, sh, shell, console;
    continuation lines joined). Lines that run something else (pip, mlflow, sudo, python, bash
    scripts) are left out."""
    text = path.read_text()
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split("#")[0] if line.lstrip().startswith("#") else line):
                found = re.search(r"(?:^|\s|/)(placetune (?!\[)\S.*)", part)
                if found and not part.strip().startswith(("pip", "mlflow", "sudo")):
                    lines.append(found.group(1).strip())
    return lines


def readme_examples() -> list[str]:
    """Every placetune command line in README.md's shell blocks."""
    return shell_examples(ROOT / "README.md")


def doc_examples() -> list[tuple[str, str]]:
    """(file, example) for every placetune command line in README.md, docs/*.md and
    experiments/README.md."""
    return [(str(path.relative_to(ROOT)), example) for path in DOC_FILES if path.is_file()
            for example in shell_examples(path)]


def parse(example: str) -> None:
    """Parse ``example`` as click would run it; raise click's error when it would not parse."""
    words = shlex.split(example, comments=True)[1:]
    cut = [i for i, w in enumerate(words) if w in (">", "|", "2>", ">>")]
    words = [w for w in words[:cut[0] if cut else None] if w != "--debug"]
    path: tuple[str, ...] = ()
    while words and (*path, words[0]) in COMMANDS:
        path = (*path, words.pop(0))
    assert path, f"no command in {example!r}"
    command = COMMANDS[path]
    assert not hasattr(command, "commands"), f"{example!r}: {' '.join(path)} needs a sub-command"
    command.make_context(" ".join(("placetune", *path)), list(words), resilient_parsing=False)


def test_every_command_shows_an_example():
    for path, cmd in COMMANDS.items():
        if not hasattr(cmd, "commands"):
            name = " ".join(path)
            assert f"$ placetune {name}" in (cmd.help or ""), f"placetune {name} --help has no example"


def test_the_docs_have_examples_to_check():
    missing = [str(path.relative_to(ROOT)) for path in DOC_FILES if not path.is_file()]
    assert not missing, f"documentation files missing: {missing}"
    assert len(DOC_FILES) >= 8, "docs/ should hold the manual's pages"
    assert len(readme_examples()) >= 4, readme_examples()
    assert len(doc_examples()) >= 15, doc_examples()


@pytest.mark.parametrize("example", help_examples())
def test_a_help_example_parses_as_written(example):
    parse(example)


@pytest.mark.parametrize(("where", "example"), doc_examples(), ids=[f"{w}: {e}" for w, e in doc_examples()])
def test_a_doc_example_parses_as_written(where, example):
    parse(example)


@pytest.mark.parametrize("example", ["placetune optimize --modle m.onnx", "placetune export --format numactl --n 3",
                                     "placetune plan --workers two", "placetune fleet stat"])
def test_a_drifted_example_is_caught(example):
    with pytest.raises((AssertionError, *PARSE_ERRORS)):
        parse(example)
