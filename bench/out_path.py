"""A benchmark's ``--out``: checked before the measurement, so a run of minutes does not end in
a traceback at the write."""

from __future__ import annotations

from pathlib import Path


def writable_out(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a file this process can write (its folder made if need be), else a one-line
    exit naming ``flag``."""
    out = Path(path)
    try:
        folder, existed = out.is_dir(), out.exists()
    except OSError as err:  # a name the file system refuses (too long, say)
        raise SystemExit(
            f"{flag} {out}: not writable ({err.strerror}); give another path"
        ) from None
    if folder:
        raise SystemExit(f"{flag} {out}: a folder; give a file path, e.g. {out / 'result.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"{flag} {out}: cannot make its folder ({err.strerror})") from None
    try:  # opened to append, so an existing file is left as it is until the results come
        with open(out, "a"):
            pass
    except OSError as err:
        raise SystemExit(
            f"{flag} {out}: not writable ({err.strerror}); give another path"
        ) from None
    if not existed:
        out.unlink()
    return out
