"""The ``placetune`` command line: parse, call the library, render.

Every PlacetuneError becomes one line on stderr and an exit code (2 for usage errors,
1 for runtime errors); ``--debug`` shows the traceback instead. The commands live in
commands_measure (topology, plan, measure), commands_study (optimize, export, report, log) and
fleet (fleet status).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from tuner.cli import commands_measure, commands_study
from tuner.cli.common import console
from tuner.cli.fleet import fleet_app
from tuner.errors import PlacetuneError

__all__ = ["app", "console", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find the best placement of ONNX Runtime inference workers on this CPU server, by measurement.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"placetune {version('placetune')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("placetune (not installed: no version metadata)")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    _show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug


app.command()(commands_measure.topology)
app.command("plan")(commands_measure.plan_command)
app.command()(commands_measure.measure)
app.command()(commands_study.optimize)
app.command()(commands_study.export)
app.command()(commands_study.report)
app.command("log")(commands_study.log_command)
app.add_typer(fleet_app, name="fleet")


def _interrupted() -> None:
    import signal

    term = _state.get("signal") == signal.SIGTERM
    how = "terminated (SIGTERM)" if term else "interrupted"
    Console(stderr=True).print(f"placetune: {how}; every worker was stopped; the trial in progress was "
                               "abandoned (an optimize study resumes when you re-run the same command)")
    sys.exit(143 if term else 130)


def _parse_errors() -> tuple[type[BaseException], ...]:
    """The exceptions click (and typer >= 0.29, which vendors click) raise for bad command lines."""
    import click

    return (click.exceptions.ClickException, getattr(typer, "TyperException", click.exceptions.ClickException))


def _exits() -> tuple[type[BaseException], ...]:
    import click

    return (click.exceptions.Exit, typer.Exit)


def _aborts() -> tuple[type[BaseException], ...]:
    import click

    return (KeyboardInterrupt, click.exceptions.Abort, typer.Abort)


def _error(message: str, code: int) -> None:
    """One line on stderr, then exit with ``code``."""
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)
    sys.exit(code)


def _unexpected(exc: Exception) -> None:
    """An exception no command turned into a PlacetuneError: a storage error, or a bug."""
    if type(exc).__module__.startswith("sqlalchemy"):
        text = str(exc).splitlines()[0][:300]
        hint = ("another process holds the SQLite file locked; retry when it is done, or use a server "
                "database (--storage postgresql://...)") if "locked" in text else "check --storage"
        _error(f"[red]placetune: error:[/] storage: {text}: {hint}", 1)
    _error(f"[red]placetune: internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug "
           "for the traceback)", 1)


def _usage_error(exc: BaseException) -> None:
    """click's usage error as one line: 'Error: ...; usage: placetune CMD [OPTIONS] (see --help)'."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    usage = ""
    if ctx is not None:
        usage = (f"; Usage: {ctx.command_path} {' '.join(ctx.command.collect_usage_pieces(ctx))} "
                 f"(see '{ctx.command_path} --help')")
    print(f"Error: {' '.join(message.split()).rstrip('.')}{usage}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", 2))


def main() -> None:
    """Console-script entry point with the one-line error policy: bad command lines exit 2 with
    click's usage message (no arguments at all: the help, exit 2), a PlacetuneError is one line."""
    import signal

    def _terminate(signum, frame):
        _state["signal"] = signum
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C (and our SIGTERM) into exit code 130
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except PlacetuneError as exc:
        if _state["debug"]:
            raise
        _error(f"[red]placetune: error:[/] {exc}", exc.exit_code)
    except _aborts():
        _interrupted()
    except _exits() as exc:
        sys.exit(exc.exit_code)
    except _parse_errors() as exc:  # click's usage errors: its message and exit code (2), on one line
        _usage_error(exc)
    except Exception as exc:  # the unexpected
        if _state["debug"]:
            raise
        _unexpected(exc)


if __name__ == "__main__":
    main()
