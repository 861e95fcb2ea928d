"""Small helpers shared across landmark_lit."""

from __future__ import annotations

import math
import os
import re
import resource
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def safe_file_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def read_table_text(
    path: str | os.PathLike, what: str, error: type[Exception] = ValueError
) -> tuple[Path, str, str]:
    """(path, suffix, text) of a ``.csv`` or ``.json`` file; a one-line ``error`` naming the file and ``what``
    it should be (missing, another suffix, unreadable) otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise error(f"{path}: unknown {what} type {path.suffix!r} (expected .csv or .json)")
    try:
        return path, suffix, path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None


def plain(value: Any) -> Any:
    """A config value as plain Python (lists, dicts, scalars; interpolations resolved); anything else as it is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux and macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash or kill while writing leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix or path.suffix, prefix=f".{path.name}.tmp_")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions of a new file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
