"""Argument checkers shared by every tfhalo module (one home for each check).

Every checker raises ``ValueError`` naming the argument and the value it
received (``Received: name=value``), so bad input fails before any work.

Example:
    >>> check_int("batch_size", 64, minimum=1)
    64
    >>> check_int("batch_size", 2.7, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an integer. Received: batch_size=2.7
"""

from __future__ import annotations

import numbers

import numpy as np


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``; rejects bools, non-integral floats and strings."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        ok = True  # 3.0 from a config file is an integer
    if not ok:
        raise ValueError(f"{name} must be an integer. Received: {name}={value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}. Received: {name}={value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}. Received: {name}={value}")
    return value


def check_float(name: str, value, positive: bool = False) -> float:
    """``value`` as a finite ``float`` (strictly positive if ``positive``)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number. Received: {name}={value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not np.isfinite(out):
        raise ValueError(f"{name} must be a finite number. Received: {name}={value!r}")
    if positive and not out > 0:
        raise ValueError(f"{name} must be positive. Received: {name}={value!r}")
    return out


def check_fraction(name: str, value) -> float:
    """``value`` as a finite ``float`` in ``(0, 1]`` (a smallest factor, say).

    Example:
        >>> check_fraction("min_factor", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: min_factor must be in (0, 1]. Received: min_factor=1.5
    """
    out = check_float(name, value, positive=True)
    if out > 1.0:
        raise ValueError(f"{name} must be in (0, 1]. Received: {name}={value!r}")
    return out


def check_probability(name: str, value) -> float:
    """``value`` as a finite ``float`` strictly between 0 and 1 (an acceptance target, say).

    Example:
        >>> check_probability("target_accept", 1.0)
        Traceback (most recent call last):
        ...
        ValueError: target_accept must lie in (0, 1). Received: target_accept=1.0
    """
    out = check_float(name, value)
    if not 0.0 < out < 1.0:
        raise ValueError(f"{name} must lie in (0, 1). Received: {name}={value!r}")
    return out


def check_choice(name: str, value, choices) -> object:
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def check_index_array(name: str, value, n: int) -> np.ndarray:
    """``(P,)`` int64 indices with ``0 <= i < n``."""
    arr = np.asarray(value).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers. Received: {name} of dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n)
    if np.any(bad):
        raise ValueError(
            f"{name} must lie in [0, {n}). Received: {int(bad.sum())} out-of-range values, "
            f"e.g. {name}[{int(np.flatnonzero(bad)[0])}]={int(arr[bad][0])}"
        )
    return arr


def check_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (a NumPy bool too); ``1``, ``"yes"`` or ``None`` are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")
    return bool(value)


#: Largest seed accepted by :func:`check_seed`: files store seeds as signed 64-bit integers.
MAX_SEED = 2**63 - 1


def check_seed(name: str, value, allow_none: bool = True) -> int | None:
    """``value`` as an ``int`` seed in ``[0, 2**63 - 1]`` (storable as int64), or None if allowed."""
    if value is None and allow_none:
        return None
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def check_range(name: str, value) -> tuple:
    """``(low, high)`` floats from a pair of finite numbers with ``low < high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers. Received: {name}={value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} must be a pair of finite numbers. Received: {name}={value!r}")
    if not lo < hi:
        raise ValueError(f"{name} must satisfy low < high. Received: {name}={value!r}")
    return lo, hi


def check_finite_array(name: str, value, source: str | None = None) -> np.ndarray:
    """``value`` as a NumPy array whose entries are all finite (no NaN, no +-inf).

    Args:
        name: the argument or field, used in the message and to show the first bad entry.
        value: array-like; integer and boolean arrays are always finite.
        source: optional owner named in the message (a file, ``"simulation 'sim_000'"``).

    Example:
        >>> check_finite_array("x", [1.0, float("nan")])
        Traceback (most recent call last):
        ...
        ValueError: x must be finite. Received: 1 non-finite of 2 values, first x[1]=nan
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return arr
    # min/max propagate NaN and keep +-inf, without a boolean copy of a large array.
    if np.isfinite(arr.min()) and np.isfinite(arr.max()):
        return arr
    bad = ~np.isfinite(arr)
    first = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)
    where = f" of {source}" if source else ""
    raise ValueError(
        f"{name}{where} must be finite. Received: {int(bad.sum())} non-finite of {arr.size} values, "
        f"first {name}[{', '.join(str(int(i)) for i in first)}]={arr[first].item()!r}"
    )


def check_output_path(name: str, value, inputs: dict | None = None):
    """``value`` as a :class:`pathlib.Path` a new output file may be written to.

    Refuses an empty path, an existing directory, a path below an existing
    file, and any path that is, or resolves to (through symlinks, ``..`` or
    hard links), an existing input or a file inside an input directory: an
    output never replaces what it is computed from.

    Args:
        name: the argument (or command-line flag) named in messages.
        value: the output path.
        inputs: ``{argument name: path or list of paths}`` the output must not touch.

    Example:
        >>> check_output_path("out", "")
        Traceback (most recent call last):
        ...
        ValueError: out must be a file path. Received: out=''
    """
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"{name} must be a file path. Received: {name}={value!r}")
    path = Path(value)
    text = str(value)
    if path.is_dir():
        raise ValueError(f"{name} must not be an existing directory. Received: {name}={text!r}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{name} cannot be created: {parent} is a file. Received: {name}={text!r}")
    resolved = path.resolve()
    for input_name, paths in (inputs or {}).items():
        for input_path in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
            input_path = Path(input_path)
            if not str(input_path).strip() or not input_path.exists():
                continue
            target = input_path.resolve()
            same = resolved == target or (path.exists() and os.path.samefile(path, input_path))
            inside = input_path.is_dir() and path.exists() and target in resolved.parents
            if same or inside:
                what = "" if same else "a file inside "
                raise ValueError(
                    f"{name} must not be an input: it is {what}{input_name}={str(input_path)!r}, which "
                    f"would be overwritten. Received: {name}={text!r}"
                )
    return path


def check_float_array(name: str, value) -> np.ndarray:
    """``value`` as a float64 NumPy array, or a ``ValueError`` naming ``name``.

    Example:
        >>> check_float_array("x", "abc")
        Traceback (most recent call last):
        ...
        ValueError: x must be an array of numbers. Received: x='abc'
    """
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers. Received: {name}={value!r:.200}") from None


def path_argument(text: str):
    """An ``argparse`` ``type`` for a file or directory argument: a non-empty path.

    An empty path would mean the current directory, so a script given
    ``--out ""`` would write its outputs there; it is refused as a usage error.

    Returns:
        The path as a :class:`pathlib.Path`.

    Raises:
        argparse.ArgumentTypeError: ``text`` is empty or blank.

    Example:
        >>> path_argument("runs/demo")
        PosixPath('runs/demo')
        >>> path_argument("")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a non-empty path, received ''
    """
    import argparse
    from pathlib import Path

    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty path, received {text!r}")
    return Path(text)


def output_path_argument(text: str):
    """An ``argparse`` ``type`` for a new output file: :func:`check_output_path` as a usage error.

    Returns:
        The path as a :class:`pathlib.Path`.

    Raises:
        argparse.ArgumentTypeError: the path is empty, an existing directory, or below a file.

    Example:
        >>> output_path_argument("runs/summary.json")
        PosixPath('runs/summary.json')
    """
    import argparse

    try:
        return check_output_path("path", text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
