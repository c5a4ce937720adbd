"""The array backend of the sampler: TFP's substrate, compilation, gradients, constants and seeds.

The Keras backend (``KERAS_BACKEND``, or ``keras.json``) picks one of two
implementations, and code written against this module runs on either:

======================  =========================================  ===============================================
                        ``tensorflow``                             ``jax``
======================  =========================================  ===============================================
:data:`tfp`             ``tensorflow_probability``                 ``tensorflow_probability.substrates.jax``
:func:`jit`             ``tf.function(jit_compile=...)``           ``jax.jit`` (always XLA: JAX has no graph mode)
:func:`traced_once`     ``tf.function`` (one trace, many callers)  ``fn`` itself (JAX caches its traces)
:func:`as_one_program`  ``fn`` itself (eager ops run uncompiled)   ``jax.jit`` (one compilation, not one per op)
gradient                ``tf.GradientTape``                        ``jax.vjp``
:func:`hessian`         nested ``tf.GradientTape``                 ``jax.hessian``
:func:`constant`        ``tf.constant``                            ``jnp.asarray``
seeds                   ``(2,)`` int32 tensor (TF stateless ops)   ``(2,)`` uint32 array (a raw ``PRNGKey``)
:func:`map_chains`      one graph copy per chain, stacked          ``jax.vmap``
======================  =========================================  ===============================================

Under JAX, float64 is switched on (``jax_enable_x64``) when this module is
imported: the sampler's states, step sizes and mass-matrix estimates are
float64, and without the flag JAX silently makes float64 arrays float32.
Importing this module under JAX loads no TensorFlow module, even where
TensorFlow is installed (see :func:`_import_jax_substrate`).

Elementwise array code inside compiled functions uses ``keras.ops``, which
follows the same Keras backend.

References:
    Lao, Suter, Langmore, Chimisov, Saxena, Sountsov, Moore, Saurous, Hoffman &
    Dillon (2020), "tfp.mcmc: Modern Markov Chain Monte Carlo Tools Built for
    Modern Hardware", arXiv:2002.01184 (TFP's substrates).
    Bradbury, Frostig, Hawkins, Johnson, Leary, Maclaurin, Necula, Paszke,
    VanderPlas, Wanderman-Milne & Zhang (2018), "JAX: composable transformations
    of Python+NumPy programs", http://github.com/jax-ml/jax.

Example:
    >>> from tfhalo import backend
    >>> backend.NAME in ("tensorflow", "jax")
    True
    >>> from keras import ops
    >>> value, grad = backend.value_and_gradient(lambda x: ops.sum(x**2, axis=-1), backend.constant([[1.0, 2.0]]))
    >>> backend.to_numpy(grad)
    array([[2., 4.]])
"""

from __future__ import annotations

import sys

import keras
import numpy as np

__all__ = ["ARGUMENT_ERRORS", "NAME", "as_one_program", "assert_positive", "constant", "flatten", "hessian",
           "hessian_fn", "jit", "leaf_from_numpy", "leaf_to_numpy", "map_chains", "static_value", "stateless_seed",
           "tfp", "to_numpy", "traced_once", "value_and_gradient"]

#: Keras backends this module implements.
BACKENDS = ("tensorflow", "jax")

NAME = keras.backend.backend()
if NAME not in BACKENDS:
    raise ImportError(f"tfhalo.backend needs the Keras backend to be one of {BACKENDS} (set KERAS_BACKEND). "
                      f"Received: Keras backend {NAME!r}")


def _import_jax_substrate():
    """``tensorflow_probability.substrates.jax``, with its first import kept off TensorFlow.

    Where TensorFlow is installed, two modules of TFP's JAX substrate
    (``internal/backend/jax/_utils.py`` and ``tf_inspect.py``) import it only to
    copy docstrings and fall back to the standard library on ``ImportError``.
    Loading TensorFlow costs seconds and memory on a machine that runs JAX, so
    ``import tensorflow`` is made to fail while those modules are first imported
    (unless the caller has already loaded TensorFlow); TensorFlow stays importable
    afterwards.
    """
    block = "tensorflow" not in sys.modules
    if block:
        sys.modules["tensorflow"] = None  # `import tensorflow` then raises ImportError
    try:
        from tensorflow_probability.substrates import jax as substrate

        # Attribute access loads these lazily: do it now, inside the block.
        for module in (substrate.bijectors, substrate.distributions, substrate.mcmc, substrate.experimental.mcmc,
                       substrate.experimental.stats, substrate.math):
            del module
    except (ImportError, AttributeError) as err:
        # TFP releases lag JAX: an older TFP's JAX substrate reaches for JAX internals that are gone.
        raise ImportError(f"TFP's JAX substrate does not import with this JAX: install the tfp-nightly that "
                          f"tfhalo's `jax` extra pins (pip install 'tfhalo[jax]'). Received: {type(err).__name__}: "
                          f"{err}") from err
    finally:
        if block and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return substrate


if NAME == "jax":
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    tfp = _import_jax_substrate()
    try:
        from tensorflow_probability.python.internal.backend.jax import errors as _substrate_errors

        ARGUMENT_ERRORS = (ValueError, _substrate_errors.InvalidArgumentError)
    except ImportError:  # a TFP layout without that module: its assertions still raise ValueError
        ARGUMENT_ERRORS = (ValueError,)
else:
    import tensorflow as tf
    import tensorflow_probability as tfp

    #: Errors a TFP bijector or assertion raises on an argument outside its domain.
    ARGUMENT_ERRORS = (ValueError, tf.errors.InvalidArgumentError)


def jit(fn, jit_compile: bool = True, static_argnums: tuple = ()):
    """``fn`` compiled: ``tf.function(jit_compile=jit_compile)`` or ``jax.jit``.

    Args:
        fn: a function of tensors (and of the Python values at ``static_argnums``).
        jit_compile: TensorFlow: compile with XLA (True) or run as a TF graph (False).
            JAX ignores it (it always compiles with XLA).
        static_argnums: positions of arguments that are Python values fixing the trace
            (e.g. a loop length): ``jax.jit``'s ``static_argnums``; TensorFlow retraces for
            each new Python value by itself.

    Returns:
        The compiled function; call it as ``fn``.

    Example:
        >>> f = jit(lambda x, n: x * n, static_argnums=(1,))
        >>> float(to_numpy(f(constant(2.0), 3)))
        6.0
    """
    if NAME == "jax":
        return jax.jit(fn, static_argnums=tuple(static_argnums))
    compiled = tf.function(fn, jit_compile=bool(jit_compile), autograph=False)
    # TensorFlow counts traces per Python code object, not per tf.function, so the many compiled
    # functions built from one closure (one per target, bijector and config in the sampler) would
    # set off its "frequent retracing" warning although each traces once per shape.
    if hasattr(compiled, "_omit_frequent_tracing_warning"):
        compiled._omit_frequent_tracing_warning = True
    return compiled


def traced_once(fn):
    """``fn``, traced once per input signature however many graphs call it (TensorFlow), else ``fn``.

    A sampler's compiled functions each call the log-density at several places (the
    kernel's bootstrap, the leapfrog body, the warm-up and the sampling blocks).  In
    TensorFlow every call site would trace ``fn`` and its gradient again: for the
    field-level posterior each trace takes seconds.  As a ``tf.function`` it is traced
    once (and its gradient built once); the graphs that call it hold a call, which
    grappler and XLA inline.  JAX caches its traces by itself, so ``fn`` comes back as is,
    as does a function traced once already (callers that build several samplers on one
    target can wrap it once and share its trace among them).

    Args:
        fn: a function of tensors (a log-density ``(C, P) -> (C,)``, say), written in
            ``keras.ops``.

    Returns:
        A function with ``fn``'s arguments and values: a ``tf.function`` without autograph
        (TensorFlow), or ``fn`` itself (JAX, or ``fn`` a ``tf.function`` already).

    Example:
        >>> f = traced_once(lambda x: 2.0 * x)
        >>> float(to_numpy(f(constant(1.5))))
        3.0
    """
    if NAME == "jax" or isinstance(fn, tf.types.experimental.PolymorphicFunction):
        return fn  # one trace already: a second wrapper would only add a call
    traced = tf.function(fn, autograph=False)
    if hasattr(traced, "_omit_frequent_tracing_warning"):
        traced._omit_frequent_tracing_warning = True
    return traced


def as_one_program(fn):
    """``fn`` evaluated as one compiled program where the backend would compile each operation (JAX).

    Called eagerly, JAX compiles every distinct operation of ``fn`` on its own the first
    time it meets it: for the field-level posterior, hundreds of small compilations that
    take far longer than compiling the whole.  Under ``jax.jit`` it compiles once per input
    shape.  TensorFlow runs operations eagerly without compiling them, so ``fn`` comes back
    as is.

    Args:
        fn: a function of tensors (positional arguments), written in ``keras.ops``; it need
            not be hashable (a callable object with ``__eq__`` but no ``__hash__`` is fine).

    Returns:
        A function with ``fn``'s positional arguments and values: ``jax.jit`` of a closure
        that calls ``fn`` (JAX), or ``fn`` itself (TensorFlow).

    Example:
        >>> f = as_one_program(lambda x: keras.ops.sum(x**2))
        >>> float(to_numpy(f(constant([1.0, 2.0]))))
        5.0
    """
    if NAME != "jax":
        return fn

    def program(*args):  # jax.jit hashes the function it compiles; fn itself may not be hashable
        return fn(*args)

    return jax.jit(program)


def value_and_gradient(fn, x):
    """``(fn(x), d sum(fn(x)) / dx)``; the gradient is None where TensorFlow finds no path to ``x``.

    For a batched log-density ``(C, P) -> (C,)`` whose chains do not interact, the
    gradient of the sum is the per-chain gradient, ``(C, P)``.

    Args:
        fn: a differentiable function of one tensor.
        x: a tensor (e.g. from :func:`constant`).

    Returns:
        ``(value, gradient)`` as backend tensors (``gradient`` may be None on TensorFlow;
        JAX returns zeros where the value does not depend on ``x``).

    Example:
        >>> value, grad = value_and_gradient(lambda x: -0.5 * keras.ops.sum(x**2, axis=-1), constant([[1.0, -3.0]]))
        >>> to_numpy(grad)
        array([[-1.,  3.]])
    """
    if NAME == "jax":
        value, pullback = jax.vjp(fn, x)
        (grad,) = pullback(jnp.ones_like(value))
        return value, grad
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return value, tape.gradient(value, x)


def constant(value, dtype="float64"):
    """``value`` as a backend tensor of ``dtype`` (a name, a NumPy dtype, or the backend's own).

    Example:
        >>> tuple(constant(np.arange(3.0)).shape)
        (3,)
    """
    if NAME == "jax":
        return jnp.asarray(value, dtype=dtype)
    return tf.constant(value, dtype=dtype)


def convert(value):
    """``value`` (a tensor, array or nested Python numbers) as a backend tensor, dtype kept or inferred."""
    if NAME == "jax":
        return jnp.asarray(value)
    return tf.convert_to_tensor(value)


def to_numpy(x) -> np.ndarray:
    """A backend tensor (eager) as a NumPy array."""
    return np.asarray(x)


def leaf_to_numpy(x) -> np.ndarray:
    """A kernel-results leaf as a NumPy array; a JAX typed PRNG key becomes its raw key data."""
    if NAME == "jax":
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
    return to_numpy(x)


def leaf_from_numpy(array, like):
    """Inverse of :func:`leaf_to_numpy`: ``array`` as a tensor of the kind of ``like`` (a key where it is one)."""
    if NAME == "jax":
        if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.asarray(array), impl=jax.random.key_impl(like))
    return convert(np.asarray(array))


def flatten(structure) -> list:
    """The leaves of a nest of tensors (lists, tuples, namedtuples, dicts), in order."""
    if NAME == "jax":
        return jax.tree_util.tree_leaves(structure)
    return tf.nest.flatten(structure)


def stateless_seed(words):
    """A stateless seed of the substrate's type from two 32-bit words.

    Args:
        words: ``(2,)`` unsigned 32-bit integers (e.g. ``np.random.SeedSequence(...).generate_state(2)``).

    Returns:
        TensorFlow: an int32 ``(2,)`` tensor of the same bits; JAX: a uint32 ``(2,)`` array (a raw
        ``jax.random.PRNGKey``). Either is the ``seed=`` TFP's samplers take.

    Example:
        >>> to_numpy(stateless_seed(np.array([1, 2], np.uint32))).tolist()
        [1, 2]
    """
    words = np.asarray(words, dtype=np.uint32)
    if words.shape != (2,):
        raise ValueError(f"words must be two 32-bit integers. Received: words.shape={words.shape}")
    if NAME == "jax":
        return jnp.asarray(words, dtype=jnp.uint32)
    return tf.constant(words.view(np.int32))


def map_chains(fn, num_chains: int):
    """``theta (P,) -> ()`` as ``(C, P) -> (C,)``: ``jax.vmap``, or on TensorFlow one call per chain, stacked.

    TensorFlow unrolls (rather than ``tf.vectorized_map``) because that works for any
    traceable ``fn``, XLA included; the cost is one graph copy of ``fn`` per chain.

    Example:
        >>> f = map_chains(lambda x: keras.ops.sum(x**2), 2)
        >>> to_numpy(f(constant(np.ones((2, 3))))).tolist()
        [3.0, 3.0]
    """
    if NAME == "jax":
        return jax.vmap(fn)

    def stacked(states):
        return tf.stack([fn(states[i]) for i in range(num_chains)])

    return stacked


def hessian(fn, x):
    """``(P, P)`` Hessian of a scalar ``fn`` at ``x (P,)``: nested ``tf.GradientTape`` or ``jax.hessian``.

    ``hessian(fn, x)`` is ``hessian_fn(fn)(x)``; to evaluate the Hessian of one
    ``fn`` at several points, make :func:`hessian_fn` once (JAX compiles it once).

    Args:
        fn: a twice-differentiable function of one ``(P,)`` tensor, returning a scalar.
        x: a ``(P,)`` tensor (e.g. from :func:`constant`).

    Returns:
        The ``(P, P)`` backend tensor ``d^2 fn / dx_i dx_j``, not symmetrised
        (autodiff's two orders of differentiation round differently).

    Example:
        >>> h = hessian(lambda t: keras.ops.sum(t**3), constant([1.0, 2.0]))
        >>> to_numpy(h).tolist()
        [[6.0, 0.0], [0.0, 12.0]]
    """
    return hessian_fn(fn)(x)


def hessian_fn(fn):
    """``x (P,) -> (P, P)`` Hessian of a scalar ``fn``: nested ``tf.GradientTape``, or ``jax.jit(jax.hessian(fn))``.

    JAX compiles it: run op by op, its first call would compile each of the many
    small operations of the second derivative on its own, several times slower
    than compiling the whole.  TensorFlow evaluates the tapes eagerly.

    Example:
        >>> h = hessian_fn(lambda t: keras.ops.sum(keras.ops.exp(t)))
        >>> to_numpy(h(constant([0.0, 0.0]))).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if NAME == "jax":
        return jax.jit(jax.hessian(fn))

    def tapes(x):
        # Row by row (a persistent tape, one backward pass per parameter), not pfor: eagerly, pfor
        # converts the whole second-derivative graph at every call, which for the bias models' tens
        # of parameters costs more than the passes (3.2 s against 5.1 s for the field-level
        # posterior's 17 bias parameters on an 8^3 grid).
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                value = fn(x)
            grad = inner.gradient(value, x)
        return outer.jacobian(grad, x, experimental_use_pfor=False)

    return tapes


def static_value(x):
    """``x`` as a NumPy array where its value is known now (eager), else None (inside a trace).

    TensorFlow: ``tf.get_static_value`` (eager tensors, and constants a graph can
    fold); JAX: any array that is not a tracer (``jax.jit``, ``jax.grad``,
    ``jax.vmap`` and the like trace their arguments).  Input checks that raise
    ``ValueError`` on a concrete value use it, and skip what only a trace sees.

    Example:
        >>> static_value(constant([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """
    if NAME == "jax":
        if isinstance(x, jax.core.Tracer):
            return None
        return np.asarray(x)
    return tf.get_static_value(x)


def assert_positive(x, message: str):
    """``x``, asserted elementwise positive when it runs: in a TensorFlow graph the assertion is an op.

    A JAX trace cannot raise on the values it will see, so under JAX ``x`` is
    returned unchecked: check concrete values first (:func:`static_value`).
    On TensorFlow a failed assertion raises ``tf.errors.InvalidArgumentError``
    (one of :data:`ARGUMENT_ERRORS`) carrying ``message``.
    """
    if NAME == "jax":
        return x
    with tf.control_dependencies([tf.debugging.assert_positive(x, message=message)]):
        return tf.identity(x)


def shard_chains(x, devices: int, replicate: bool = False):
    """``x`` placed on the first ``devices`` JAX devices: split along its leading (chain) axis, or replicated.

    A ``jax.sharding.NamedSharding`` over a 1-D mesh named ``"chains"``; ``jax.jit``
    then compiles the functions ``x`` flows into SPMD (GSPMD partitions the program
    along that axis and inserts the cross-device reductions, e.g. a mean over the
    chains).  Sharding changes where values live, not what they are: the chains'
    random draws do not depend on it (``jax_threefry_partitionable``, the default).

    Args:
        x: an array; with ``replicate=False`` its leading axis (``C``) must be a
            multiple of ``devices``.
        devices: positive integer; 1 returns ``x`` unchanged (on either backend).
        replicate: place a full copy of ``x`` on each device (e.g. a shared step size
            or inverse mass matrix) instead of splitting it.

    Returns:
        ``x``, sharded (JAX) or unchanged (``devices == 1``).

    Raises:
        ValueError: ``devices > 1`` on TensorFlow, more devices than JAX sees, or a
            leading axis that does not split evenly.

    Example:
        >>> to_numpy(shard_chains(constant([1.0, 2.0]), 1)).tolist()
        [1.0, 2.0]
    """
    if devices == 1:
        return x
    if NAME != "jax":
        raise ValueError(f"devices > 1 (sharding the chains) needs the JAX backend (KERAS_BACKEND=jax). "
                         f"Received: devices={devices} on the {NAME} backend")
    found = jax.devices()
    if devices > len(found):
        raise ValueError(f"devices must be at most the {len(found)} JAX device(s) available. "
                         f"Received: devices={devices}")
    if not replicate and (x.ndim == 0 or x.shape[0] % devices != 0):
        raise ValueError(f"the leading axis of x must split evenly over devices={devices}. "
                         f"Received: x.shape={tuple(x.shape)}")
    mesh = jax.sharding.Mesh(np.array(found[:devices]), ("chains",))
    spec = jax.sharding.PartitionSpec() if replicate else jax.sharding.PartitionSpec("chains")
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
