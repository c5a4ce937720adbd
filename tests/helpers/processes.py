"""Module-level functions for the process tests (a spawned process imports its function by name)."""

import os
import time


def environment(*names):
    """``(pid, {name: value})`` of this process."""
    return os.getpid(), {k: os.environ.get(k) for k in names}


def fail_after(seconds, message):
    """Sleep, then raise ``ValueError(message)`` (``seconds`` None: return ``message`` at once)."""
    if seconds is None:
        return message
    time.sleep(seconds)
    raise ValueError(message)
