"""Data-parallel training of Keras models on several devices, on the JAX or TensorFlow backend.

Each device holds a full copy of the weights and takes an equal share of every
batch; the gradients of the shares are combined before each update, so one
step on ``n`` devices is the step one device takes on the whole (global)
batch, up to float rounding. The backends' own machinery does the work:

* JAX: ``keras.distribution.DataParallel`` (weights replicated, each batch
  sharded along its first axis over a one-axis device mesh).
* TensorFlow: ``tf.distribute.MirroredStrategy`` (mirrored variables, gradients
  summed over the replicas of per-replica losses scaled by ``1 / n``).

Build, compile and fit the model inside :func:`data_parallel`'s scope: the
weights must be created on every device. The devices are the backend's
accelerators (GPUs), or its CPUs when it sees none. A batch must split
evenly over the devices (JAX cannot shard an uneven batch, and TensorFlow's
uneven shares would weight the samples of the smaller share more), including
the last, partial batch of an epoch: :func:`check_batch_split`.

On TensorFlow a ``keras.utils.PyDataset`` must return freshly made arrays,
never views into arrays it keeps: the distributed input pipeline takes the
batch's memory without a copy and may write into it (a kept label array
comes back overwritten, and every later epoch trains on garbage).
:class:`tfhalo.data.HaloDataset` builds every batch anew.

This is the one module of the package that imports TensorFlow or JAX
directly, and only inside its functions: importing it is cheap.

Used to train the deep-halo CNN of Lucie-Smith, Peiris, Pontzen, Nord &
Thiyagalingam (2020), "Deep learning insights into cosmological structure
formation", arXiv:2011.10577, whose published preset (75^3 inputs, 200k
training particles) wants several GPUs.

Example:
    >>> from tfhalo.distribute import data_parallel
    >>> from tfhalo.models import halo_cnn
    >>> with data_parallel(2):                             # doctest: +SKIP
    ...     model = halo_cnn(input_shape=(17, 17, 17, 1), conv_filters=(4,), pool_after=(True,),
    ...                      dense_units=(8,), seed=0)
    ...     model.fit(x, y, batch_size=64, epochs=2)        # 32 samples per device and step
"""

from __future__ import annotations

import contextlib

from tfhalo.validation import check_int

__all__ = ["available_devices", "check_batch_split", "check_devices", "data_parallel"]

#: Keras backends with a data-parallel implementation here.
BACKENDS = ("jax", "tensorflow")


def _backend() -> str:
    import keras

    return keras.backend.backend()


def available_devices() -> list:
    """Names of the devices data-parallel training can use on the current Keras backend.

    The backend's GPUs (TensorFlow: its logical GPUs), or its CPUs when it has
    none (several only when virtual ones were configured, e.g. JAX's
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` or TensorFlow's
    ``tf.config.set_logical_device_configuration``).

    Returns:
        Device names in the backend's own spelling (JAX ``"gpu:0"``, TensorFlow
        ``"/job:localhost/replica:0/task:0/device:GPU:0"``).

    Raises:
        ValueError: the backend is neither JAX nor TensorFlow.

    Example:
        >>> available_devices()  # doctest: +SKIP
        ['/job:localhost/replica:0/task:0/device:CPU:0']
    """
    backend = _backend()
    if backend == "jax":
        import keras

        return [str(d) for d in keras.distribution.list_devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [d.name for d in found]
    raise ValueError(f"data-parallel training needs the Keras backend to be one of {BACKENDS} (set "
                     f"KERAS_BACKEND). Received: backend={backend!r}")


def check_devices(devices) -> list:
    """The first ``devices`` devices of :func:`available_devices`, after checking there are enough.

    Args:
        devices: positive integer; 1 needs no distribution and lists nothing.

    Returns:
        ``devices`` device names (``[]`` for 1).

    Raises:
        ValueError: ``devices`` is not a positive integer, the backend cannot
            distribute, or it sees fewer devices than asked (naming them).

    Example:
        >>> check_devices(1)
        []
    """
    devices = check_int("devices", devices, minimum=1)
    if devices == 1:
        return []
    found = available_devices()
    if len(found) < devices:
        raise ValueError(f"devices must be at most the {len(found)} device(s) the {_backend()} backend sees "
                         f"({', '.join(found)}). Received: devices={devices}")
    return found[:devices]


def check_batch_split(devices, n_items, batch_size, items_name: str = "n_items",
                      batch_name: str = "batch_size") -> None:
    """Refuse batches that do not split evenly over ``devices``.

    Every batch of ``n_items`` served in batches of ``batch_size`` (the
    last one holds ``n_items % batch_size`` when that is not 0; nothing is
    dropped) must hold a multiple of ``devices`` items.

    Args:
        devices, n_items, batch_size: positive integers.
        items_name, batch_name: the names the error message gives them.

    Raises:
        ValueError: naming the argument and its value.

    Example:
        >>> check_batch_split(2, 3000, 64, "n_train")    # 46 batches of 64, one of 56
        >>> check_batch_split(4, 3001, 64, "n_train")    # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ValueError: n_train must leave a last batch that splits evenly over devices=4 ...
    """
    devices = check_int("devices", devices, minimum=1)
    n_items = check_int(items_name, n_items, minimum=1)
    batch_size = check_int(batch_name, batch_size, minimum=1)
    if n_items >= batch_size and batch_size % devices:  # fewer items than a batch: one (last) batch only
        raise ValueError(f"{batch_name} must be a multiple of devices={devices} (each device takes an equal "
                         f"share of every batch). Received: {batch_name}={batch_size}")
    last = n_items % batch_size
    if last % devices:
        raise ValueError(f"{items_name} must leave a last batch that splits evenly over devices={devices}: "
                         f"{items_name} % {batch_name} = {last} is not a multiple of {devices} "
                         f"({batch_name}={batch_size}). Received: {items_name}={n_items}")


def data_parallel(devices=1):
    """Context manager under which Keras models are built and trained on ``devices`` devices.

    ``devices=1`` is no distribution at all (a null context). Otherwise the
    first ``devices`` of :func:`available_devices`: on JAX the scope of a
    ``keras.distribution.DataParallel``, on TensorFlow that of a
    ``tf.distribute.MirroredStrategy``. Create the model (and load weights
    into it) inside the scope; a TensorFlow model keeps its strategy after
    the scope ends, a JAX model keeps its replicated weights (fit it again
    only inside a scope of the same devices).

    Args:
        devices: positive integer.

    Returns:
        A context manager (fresh per call).

    Raises:
        ValueError: as :func:`check_devices`, before anything is built.

    Example:
        >>> with data_parallel(1):   # no distribution
        ...     pass
        >>> with data_parallel(4):   # doctest: +SKIP
        ...     model = halo_cnn(input_shape=(75, 75, 75, 1), seed=0)
        ...     model.fit(train_ds, epochs=100, shuffle=False)
    """
    names = check_devices(devices)
    if not names:
        return contextlib.nullcontext()
    if _backend() == "jax":
        import keras

        return keras.distribution.DataParallel(devices=names).scope()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=names).scope()
