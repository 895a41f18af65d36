"""Files placetune writes for the user (--out, --html): checked before any work, written atomically.

A regular file is written to a temporary file in the same directory and renamed over the target,
so an interrupted write never leaves half a config behind; the check before the work therefore
asks whether a file can be created in that directory. A device or FIFO (``--out /dev/stdout``) is
written in place.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from tuner.errors import UsageError


def _special(path: Path) -> bool:
    """An existing target that is not a regular file or directory (a device, a FIFO)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_writable(path: Path, flag: str, folder_ok: bool = False) -> None:
    """Raise a UsageError naming ``flag`` unless ``path`` can be written (before any work is done).
    With ``folder_ok`` (an output that may turn out to be a folder of files, as a deployment's
    export is), an existing directory passes when files can be created in it; a path that does not
    exist yet must, like a file, have an existing writable parent."""
    real = Path(os.path.realpath(path))
    if real.is_dir():
        if not folder_ok:
            raise UsageError(f"{flag} {path} is a directory; give a file path")
        _probe(real, flag, path)
        return
    if _special(real):
        if not os.access(real, os.W_OK):
            raise UsageError(f"{flag} {path} is not writable")
        return
    parent = real.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist; create it or choose another path")
    _probe(parent, flag, path, f".{real.name}.")


def _probe(directory: Path, flag: str, path: Path, prefix: str = ".placetune.") -> None:
    """Raise a UsageError naming ``flag`` and ``path`` unless a file can be created in ``directory``."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=prefix, suffix=".tmp"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {directory} ({exc.strerror or exc}); "
                         "choose another path") from None


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or
    the new one, never a partial one. ``mode`` sets the permission bits (default: 0644 less umask)."""
    real = Path(os.path.realpath(path))
    if _special(real):
        with open(real, "w") as f:
            f.write(text)
        return
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode if mode is not None else 0o666 & ~umask)
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
