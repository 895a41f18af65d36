"""Where studies live: the Optuna storage URL, its engine options, loading an existing study; and
how loud Optuna is while placetune uses it."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna

from tuner.errors import UsageError


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Within it, Optuna logs errors only and does not warn about its experimental features (the
    heartbeat, constraints, TPE's multivariate mode): its INFO lines and those warnings are not for
    placetune's users. The previous verbosity and warning filters come back on exit, so importing
    placetune changes nothing for a program that uses Optuna itself."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def ensure_study_uuid(study: optuna.Study) -> str:
    """The id MLflow runs carry to find their study again (given once, kept forever)."""
    if "study_uuid" not in study.user_attrs:
        study.set_user_attr("study_uuid", uuid.uuid4().hex)
    return study.user_attrs["study_uuid"]


def load_study(storage: str | None, name: str | None) -> optuna.Study:
    """An existing study, for export/report/log; the only one in the storage when no name is given."""
    url = storage_url(storage)
    if storage is None and not Path("placetune.db").is_file():
        raise UsageError("no placetune.db here: give --storage URL (the study's Optuna storage) or run this "
                         "where 'placetune optimize' ran")
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():  # SQLite would create an empty database there
        raise UsageError(f"--storage {url}: no database file {sqlite_file}; check the path (a study's storage "
                         "is where 'placetune optimize' wrote it)")
    try:
        with quiet_optuna():
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
            names = [s.study_name for s in optuna.get_all_study_summaries(rdb, include_best_trial=False)]
    except Exception as exc:
        raise UsageError(f"--storage {url}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise UsageError(f"{len(names)} studies in {url} ({listed}): choose one with --study NAME")
        name = names[0]
    if name not in names:
        raise UsageError(f"no study {name!r} in {url}; studies there: {', '.join(names) or 'none'}")
    with quiet_optuna():
        return optuna.load_study(study_name=name, storage=rdb)


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


SQLITE_BUSY_TIMEOUT_S = 60.0


def engine_kwargs(url: str) -> dict:
    """SQLAlchemy options: a SQLite file locked by another process is waited for (up to a minute)
    instead of failing at once; server databases get connection health checks."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def storage_url(storage: str | None) -> str:
    """``--storage`` or the default SQLite file in the working directory."""
    return storage or f"sqlite:///{Path('placetune.db').resolve()}"

