"""What ``placetune optimize`` shows while the optimize service runs: a progress bar over the trials,
one line per trial, the study's answer, the final race, the next steps."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tuner.app.optimize import OptimizeListener, OptimizeOutcome, OptimizeStart, TrialEvent
from tuner.cli import render_study
from tuner.cli.common import warn
from tuner.search.race import RaceResult


class OptimizeView(OptimizeListener):
    """Renders the events of ``run_optimize`` on ``console``; use it as a context manager, so that an
    interrupted run stops the progress bar and the race's spinner."""

    def __init__(self, console: Console):
        self.console = console
        self._progress: Progress | None = None
        self._task = None
        self._target = 0
        self._status = None

    def __enter__(self) -> OptimizeView:
        return self

    def __exit__(self, *exc) -> None:
        self._stop_progress()
        if self._status is not None:
            self._status.stop()
            self._status = None

    def started(self, start: OptimizeStart) -> None:
        if start.mlflow_uri is not None:
            self.console.print(f"MLflow: {start.mlflow_uri} (experiment {start.mlflow_experiment})")
        self.console.print(f"study [bold]{start.study_name}[/] in {start.storage} "
                           f"({start.already_measured} config(s) already measured)")
        fixed = ", ".join(f"{k}={v}" for k, v in start.space_fixed.items())
        self.console.print(f"space {start.space_name}: {start.space_size} plannable configs; "
                           f"fixed on this machine: {fixed}")
        self._target = start.target_measured
        self._progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                  console=self.console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("trials", total=self._target,
                                             completed=min(start.already_measured, self._target), status="")

    def progress(self, message: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, status=message)

    def trial_done(self, event: TrialEvent) -> None:
        self._progress.console.print(render_study.trial_line(event), highlight=False)
        self._progress.update(self._task, completed=min(max(event.measured, event.spent), self._target), status="")

    def search_done(self, outcome: OptimizeOutcome) -> None:
        self._stop_progress()
        if outcome.space_exhausted and outcome.measured < outcome.target_measured:
            self.console.print(f"[yellow]every config of the space is measured ({outcome.measured} configs, "
                               "baselines included): the study stops here[/]")
        if outcome.best is None:
            self.console.print(f"[red]{render_study.no_feasible_message(outcome)}[/]")
            return
        self.console.print(render_study.pareto_table(render_study.front_rows(outcome)))
        self.console.print(render_study.best_line(outcome))
        self.console.print(render_study.ratios_table(outcome))

    def race_started(self, k: int) -> None:
        self._status = self.console.status("final race")
        self._status.start()

    def race_progress(self, message: str) -> None:
        if self._status is not None:
            self._status.update(message)

    def race_done(self, race: RaceResult) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        self.console.print(render_study.race_table(race))
        self.console.print(render_study.race_summary(race))

    def warning(self, message: str) -> None:
        warn(message)

    def done(self, outcome: OptimizeOutcome, out) -> None:
        """The closing lines of a run that found a config: where it is, what to do next."""
        self.console.print(render_study.next_steps(out, outcome.mlflow_uri), highlight=False)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
