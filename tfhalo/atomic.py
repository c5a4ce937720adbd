"""Atomic file and directory writes: temporary name next to the destination, then rename.

A reader never sees a partial result: the writer fills a temporary path in the
destination's own directory (same file system, so :func:`os.replace` is an
atomic rename) and only a finished write is renamed into place. If the write
raises (KeyboardInterrupt included), the temporary file or directory is
removed and the destination is left as it was.

* :func:`atomic_path`: context manager yielding the temporary path, for any
  writer that takes a file name (h5py, ``np.savez``, ``fig.savefig``,
  ``model.save``, pynbody) or fills a directory.
* :func:`write_text_atomic`, :func:`write_json_atomic`, :func:`save_npz_atomic`:
  the common cases.

Temporary names:

* ``unique=True`` (default): ``.<name>.<pid>.<random><suffix>``, hidden and
  distinct per writer, so concurrent writers of the same destination never
  share a temporary file.
* ``unique=False``: exactly ``<name><suffix>`` (:func:`fixed_temporary_path`),
  for resumable jobs whose clean-up looks for that name (e.g.
  ``tfhalo.sim.suite`` removes ``sim_000.tmp/`` and ``sim_000.h5.tmp`` left by
  an interrupted run).

Writers that infer the format from the extension need ``suffix`` to end with
it: ``np.savez`` appends ``.npz`` otherwise, Keras requires ``.keras``,
matplotlib picks the format from ``.png``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.npz", suffix=".tmp.npz") as tmp:
    ...     np.savez(tmp, x=np.arange(3))                  # doctest: +SKIP
    >>> write_json_atomic(d / "a.json", {"x": 1}).name
    'a.json'
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_path", "fixed_temporary_path", "save_npz_atomic", "write_json_atomic", "write_text_atomic"]


def fixed_temporary_path(path: PathLike, suffix: str = ".tmp") -> Path:
    """The deterministic temporary name ``atomic_path(path, suffix, unique=False)`` uses."""
    path = Path(path)
    return path.with_name(path.name + suffix)


def _unique_temporary_path(path: Path, suffix: str) -> Path:
    # Name only, nothing created: writers of directories (Keras export) want
    # the path not to exist yet, and pid + 32 random bits cannot collide in practice.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp", *, unique: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The body writes a file or a directory at the yielded path. On normal exit
    it is moved onto ``path`` with :func:`os.replace`; a directory replaces an
    existing directory ``path`` (which is removed first: POSIX cannot rename
    onto a non-empty directory, so there is a short window with neither). On
    an exception, in the body or in the rename, the temporary file or
    directory is removed and the exception re-raised; ``path`` is untouched.

    Args:
        path: destination. Its directory must exist (callers decide whether to create it).
        suffix: end of the temporary name; must carry the extension a writer needs.
        unique: ``True`` for a per-writer name, ``False`` for exactly
            ``path.name + suffix`` (see the module docstring).

    Yields:
        The temporary :class:`~pathlib.Path` (not created).

    Raises:
        TypeError: ``suffix`` is not a string.
        ValueError: ``suffix`` is empty or contains a path separator.

    Example:
        >>> with atomic_path("out/pred.h5") as tmp:                # doctest: +SKIP
        ...     with h5py.File(tmp, "w") as f:
        ...         f["x"] = values
    """
    if not isinstance(suffix, str):
        raise TypeError(f"suffix must be a string. Received: suffix={suffix!r}")
    if not suffix or os.sep in suffix or (os.altsep and os.altsep in suffix):
        raise ValueError(f"suffix must be non-empty and contain no path separator. Received: suffix={suffix!r}")
    path = Path(path)
    tmp = _unique_temporary_path(path, suffix) if unique else fixed_temporary_path(path, suffix)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, creating its directory if missing.

    Returns:
        The destination path.

    Example:
        >>> write_text_atomic("out/report.md", "# Report\\n")   # doctest: +SKIP
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string. Received: type(text)={type(text).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding) as fh:
            fh.write(text)
    return path


def write_json_atomic(path: PathLike, payload, indent: int = 2) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically, creating its directory if missing.

    The payload is serialised before anything is written, so an object that
    is not JSON-able raises ``TypeError`` and leaves no file behind.

    Returns:
        The destination path.

    Example:
        >>> write_json_atomic("out/summary.json", {"r": 0.9})   # doctest: +SKIP
    """
    return write_text_atomic(path, json.dumps(payload, indent=indent))


def save_npz_atomic(path: PathLike, **arrays) -> Path:
    """``np.savez`` to ``path`` atomically, creating its directory if missing.

    ``np.savez`` appends ``.npz`` to any other name, so the temporary name ends
    in ``.npz`` too.

    Returns:
        The destination path.

    Example:
        >>> save_npz_atomic("out/chains.npz", samples=np.zeros((10, 4, 17)))   # doctest: +SKIP
    """
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)
    return path
