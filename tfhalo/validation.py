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
