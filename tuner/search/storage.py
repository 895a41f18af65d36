"""Where studies live: the Optuna storage URL, its engine options, loading an existing study."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna

from tuner.errors import UsageError


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

