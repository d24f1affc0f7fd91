"""The output rule: twin writes only its own files, and replaces them only with --force.

Without --force no file twin would write may exist already, so nothing the user put in the
directory is touched; with --force the files twin writes are replaced and nothing else is
removed. Operating-system errors on these paths become one-line errors in ``friendly_errors``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from twin.errors import TwinError


def out_flag(text: str | Path | None, flag: str = "--out") -> Path | None:
    """The directory a flag names; an empty name would silently mean the current directory."""
    if text is None:
        return None
    if not str(text).strip():
        raise TwinError(f"{flag} is empty; give a directory name (use {flag} . for this one)")
    return Path(text)


def claim_out(
    out: Path,
    names: Iterable[str],
    force: bool,
    what: str = "a result",
    keep: Iterable[str] = (),
    flag: str = "--out",
    create: bool = True,
) -> Path:
    """Create ``out`` for the files ``names``; refuse when one exists and ``force`` is off.

    ``keep`` lists names that may already exist without --force (the results a --resume
    continues from). With ``create`` off the directory is only checked, so a command that
    fails on its input leaves no trace; the writer creates it.
    """
    if out.exists() and not out.is_dir():
        raise TwinError(f"{flag} {out} is a file; give a directory")
    allowed = set(keep)
    held = [n for n in names if n not in allowed and (out / n).exists()]
    if held and not force:
        raise TwinError(
            f"{flag} {out} already holds {what} ({', '.join(held)}); choose a new directory, "
            "or pass --force to replace only the files twin writes there"
        )
    _check_writable(out, flag)
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def _check_writable(out: Path, flag: str) -> None:
    """Fail before the work, not after it, when the directory cannot be made or written."""
    base = out.absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise TwinError(f"{flag} {out}: {base} is a file, so no directory can be made there")
    if not os.access(base, os.W_OK | os.X_OK):
        raise TwinError(f"{flag} {out}: {base} is not writable; choose another directory")


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error: the path it concerns and the reason."""
    path = exc.filename if exc.filename is not None else "a path"
    reason = exc.strerror or exc.__class__.__name__
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    return f"{path}: {reason}; check the path (e.g. --out) and its permissions"
