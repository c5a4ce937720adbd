"""Session set-up shared by every test.

Under JAX the session compiles through one persistent XLA compilation cache, in a temporary
directory removed at exit: many tests compile the same program (the sampler's kernels on the
same small targets) from new function objects, which ``jax.jit``'s own cache, keyed by the
function, does not share, and XLA compiles dominate the JAX suite. The directory is passed on
in the environment, so that the tests' fresh interpreters (``run_under_jax_without_tensorflow``)
use it too. A cached executable is the one compiled for the same program, so no result changes.
"""

import atexit
import os
import shutil
import tempfile

if os.environ.get("KERAS_BACKEND") == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="tfhalo-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    # Short compiles too: most of the suite's are a fraction of a second to a few seconds each.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
