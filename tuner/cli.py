"""The ``placetune`` command line: parse, call the library, render.

Every PlacetuneError becomes one line on stderr and an exit code (2 for usage errors,
1 for runtime errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuner.errors import PlacetuneError, UsageError
from tuner.placement import Params, plan
from tuner.render import plan_table, topology_tree
from tuner.topology import Topology, load_topology_file, read_topology

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find the best placement of ONNX Runtime inference workers on this CPU server, by measurement.",
    pretty_exceptions_enable=False,
)
console = Console()
_state = {"debug": False}

FsRoot = Annotated[
    Path | None,
    typer.Option("--fsroot", help="Read the topology below this root (a machine dump) instead of /."),
]
TopologyFile = Annotated[
    Path | None,
    typer.Option("--topology", help="Use a topology saved with 'placetune topology --json'."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def get_topology(fsroot: Path | None, topology_file: Path | None) -> Topology:
    """The topology from --topology, --fsroot, or the live machine."""
    if fsroot is not None and topology_file is not None:
        raise UsageError("give either --fsroot or --topology, not both")
    if topology_file is not None:
        return load_topology_file(topology_file)
    if fsroot is not None:
        if not fsroot.is_dir():
            raise UsageError(f"--fsroot {fsroot} is not a directory")
        return read_topology(fsroot)
    return read_topology("/")


@app.command()
def topology(
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the CPU/NUMA topology: packages, NUMA nodes, L3 groups, cores, PUs, usable or not."""
    topo = get_topology(fsroot, topology_file)
    if as_json:
        sys.stdout.write(topo.to_json() + "\n")
        return
    console.print(topology_tree(topo))


@app.command("plan")
def plan_command(
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    cores_per_worker: Annotated[int, typer.Option(help="Physical cores per worker.")] = 1,
    smt: Annotated[bool, typer.Option("--smt/--no-smt", help="Use every SMT sibling of a core.")] = False,
    numa_policy: Annotated[str, typer.Option(help="none | bind | interleave | preferred")] = "none",
    io_cores: Annotated[int, typer.Option(help="Cores kept for the load generator.")] = 0,
    fsroot: FsRoot = None,
    topology_file: TopologyFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the placement a config gets on a topology, without running anything."""
    topo = get_topology(fsroot, topology_file)
    params = Params(workers=workers, cores_per_worker=cores_per_worker, smt=smt,
                    numa_policy=numa_policy, io_cores=io_cores)
    result = plan(topo, params)
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
        return
    console.print(plan_table(result))


def main() -> None:
    """Console-script entry point with the one-line error policy."""
    try:
        app(standalone_mode=False)
    except PlacetuneError as exc:
        if _state["debug"]:
            raise
        Console(stderr=True).print(f"[red]placetune: error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        Console(stderr=True).print("placetune: aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the unexpected
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        Console(stderr=True).print(
            f"[red]placetune: internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug "
            "for the traceback)", highlight=False, soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
