"""The deep-halo CNN of Lucie-Smith et al. (2020) and its training model class.

Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
insights into cosmological structure formation", arXiv:2011.10577.

:func:`halo_cnn` with no arguments builds the published network of that paper:
input 75^3 x 1; six 3^3 convolutions (32, 32, 64, 128, 128, 128 filters,
"same" padding, LeakyReLU(0.03)), MaxPooling3D(2, "same") after convolutions
2-6 (75 -> 38 -> 19 -> 10 -> 5 -> 3), flatten (3456), Dense 256 and 128
(LeakyReLU(0.03)), Dense 1 (linear), then a :class:`~tfhalo.layers.CauchyScale`
holding the trainable gamma: 2,108,257 network weights + gamma =
2,108,258 trainable parameters. Conv kernels carry ``L2(alpha)``, Dense 1 and 2
``L1GroupLasso(alpha)``; the last Dense and all biases are unregularised.

How the loss finds gamma: the network is a :class:`HaloModel`, a functional
``keras.Model`` whose :meth:`HaloModel.compute_loss` binds every
:class:`~tfhalo.losses.CauchySelectionLoss` it was compiled with to its
CauchyScale layer before computing the loss. So ``model.compile(optimizer,
loss=CauchySelectionLoss())`` works as with any Keras loss, on TensorFlow and
JAX, and again after ``keras.saving.load_model`` (which recompiles with a fresh,
unbound loss). ``HaloModel.fit`` also adds a :class:`GammaHistory` callback (if
none is given), so ``history.history["gamma"]``, the progress bar and a
``CSVLogger`` report gamma after each epoch.

Non-finite data never trains silently: ``HaloModel.fit`` refuses array inputs
with a NaN or inf (and, with a CauchySelectionLoss, labels outside [-1, 1])
before the first step, and a :class:`NonFiniteLossCheck` callback stops
training with a :class:`NonFiniteLossError` naming the epoch and batch as soon
as the loss is NaN or inf (data served by a dataset or generator, or diverging
training).

Example (``y`` scaled to [-1, 1]; ``history.history["gamma"]`` holds gamma after each epoch):
    >>> model = halo_cnn(input_shape=(17, 17, 17, 1), conv_filters=(4, 8, 8),
    ...                  pool_after=(False, True, True), dense_units=(16,))
    >>> history = model.fit(x, y, batch_size=8, epochs=2)   # doctest: +SKIP
    >>> history.history["gamma"]                            # doctest: +SKIP
"""

import math
import numbers

import keras
import numpy as np
from keras import ops, tree

from tfhalo.layers import CauchyScale, MultipoleConv3D
from tfhalo.layers.cauchy import _check_positive_finite
from tfhalo.losses import CauchySelectionLoss, check_scaled_labels
from tfhalo.regularizers import L1GroupLasso
from tfhalo.validation import check_finite_array

PAPER_CONV_FILTERS = (32, 32, 64, 128, 128, 128)
PAPER_POOL_AFTER = (False, True, True, True, True, True)
PAPER_DENSE_UNITS = (256, 128)
PAPER_ALPHA = 10**-2.5


def find_cauchy_scale(model):
    """Returns the single CauchyScale layer of ``model`` (searched recursively)."""
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, CauchyScale):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    if len(found) != 1:
        raise ValueError(
            f"model must contain exactly one tfhalo.layers.CauchyScale layer. Received: {len(found)} in model "
            f"{model.name!r}"
        )
    return found[0]


@keras.saving.register_keras_serializable(package="tfhalo")
class GammaHistory(keras.callbacks.Callback):
    """Records the Cauchy scale gamma after each epoch.

    Adds ``logs["gamma"]`` in ``on_epoch_end`` (so ``History``, the progress bar
    and a ``CSVLogger`` listed after it record it) and keeps ``self.gammas``.

    Example:
        >>> tracker = GammaHistory()
        >>> model.fit(x, y, callbacks=[tracker, keras.callbacks.CSVLogger("log.csv")])  # doctest: +SKIP
        >>> tracker.gammas  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self.gammas = []

    def on_epoch_end(self, epoch, logs=None):
        gamma = float(ops.convert_to_numpy(find_cauchy_scale(self.model).gamma))
        self.gammas.append(gamma)
        if logs is not None:
            logs["gamma"] = gamma

    def get_config(self):
        return {}


class NonFiniteLossError(ValueError):
    """The training or validation loss became NaN or inf; raised by :class:`NonFiniteLossCheck`."""


@keras.saving.register_keras_serializable(package="tfhalo")
class NonFiniteLossCheck(keras.callbacks.Callback):
    """Stops ``fit`` with a :class:`NonFiniteLossError` at the first NaN or inf loss.

    Unlike ``keras.callbacks.TerminateOnNaN``, which ends training quietly,
    this raises an error naming the epoch and batch (1-based, as in the
    progress bar). Keras' logged loss is the running mean over the epoch, so
    the first non-finite value marks the batch that caused it. That batch's
    update has already been applied: restore the weights from a checkpoint.
    :meth:`HaloModel.fit` adds one if none is given.

    Example:
        >>> model.fit(dataset, epochs=10, callbacks=[NonFiniteLossCheck()])  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check("training", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._check("validation", batch, logs)

    def _check(self, phase, batch, logs):
        if not logs or "loss" not in logs:
            return
        value = float(ops.convert_to_numpy(logs["loss"]))
        if math.isfinite(value):
            return
        params = self.params or {}
        epochs = f"/{params['epochs']}" if params.get("epochs") else ""
        steps = f"/{params['steps']}" if params.get("steps") and phase == "training" else ""
        raise NonFiniteLossError(
            f"the {phase} loss is {value} at epoch {self._epoch + 1}{epochs}, batch {batch + 1}{steps}. "
            f"Causes: non-finite inputs (a NaN or inf voxel), labels outside [-1, 1] (CauchySelectionLoss "
            f"gives them a NaN loss inside a compiled step), or diverging training (lower the learning "
            f"rate). This batch's update was applied: restore the weights from a checkpoint."
        )

    def get_config(self):
        return {}


# keras.Model.fit's positional parameters, in order.
_FIT_PARAMETERS = ("x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_split",
                   "validation_data", "shuffle", "class_weight", "sample_weight")


def _named_arrays(name, value):
    """``(name, array)`` for every in-memory array in ``value`` (nested lists/dicts); datasets are skipped."""
    if isinstance(value, np.ndarray) or (ops.is_tensor(value) and not keras.backend.is_keras_tensor(value)):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _named_arrays(f"{name}[{i}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _named_arrays(f"{name}[{key!r}]", item)


@keras.saving.register_keras_serializable(package="tfhalo")
class HaloModel(keras.Model):
    """Functional Keras model that feeds its CauchyScale's gamma to the loss.

    Build it like ``keras.Model(inputs, outputs)``; the graph must contain one
    :class:`~tfhalo.layers.CauchyScale`. Everything else is standard Keras.
    """

    @property
    def cauchy_scale(self):
        """The model's CauchyScale layer."""
        return find_cauchy_scale(self)

    @property
    def gamma(self):
        """Current gamma as a Python float."""
        return float(ops.convert_to_numpy(self.cauchy_scale.gamma))

    def _bind_cauchy_losses(self):
        # Rebinding also covers a loss object first used with another model.
        scale_layer = None
        for loss in tree.flatten(getattr(self, "loss", None)):
            if isinstance(loss, CauchySelectionLoss) and loss.scale is None:
                scale_layer = scale_layer or self.cauchy_scale
                if loss._scale_layer is not scale_layer:
                    loss.bind(scale_layer)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Runs inside Keras' (stateless, under JAX) loss scope, so the gamma the
        # bound loss reads here is the traced, differentiated variable.
        self._bind_cauchy_losses()
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def fit(self, *args, **kwargs):
        """``keras.Model.fit`` that refuses non-finite data, with gamma and loss tracking.

        Before any step: in-memory ``x``, ``y``, ``sample_weight`` and
        ``validation_data`` must be finite, and with a
        :class:`~tfhalo.losses.CauchySelectionLoss` the labels must lie in
        [-1, 1]. A :class:`GammaHistory` and a :class:`NonFiniteLossCheck` are
        added unless given.

        Raises:
            ValueError: non-finite arrays or labels outside [-1, 1], naming the
                argument and the first bad entry (nothing is trained).
            NonFiniteLossError: the loss became NaN or inf during training.
        """
        if len(args) > len(_FIT_PARAMETERS):
            raise TypeError(f"fit() takes at most {len(_FIT_PARAMETERS)} positional arguments. "
                            f"Received: {len(args)}")
        for name, value in zip(_FIT_PARAMETERS, args):
            if name in kwargs:
                raise TypeError(f"fit() got multiple values for argument {name!r}")
            kwargs[name] = value
        self._check_fit_data(kwargs)
        kwargs["callbacks"] = self._with_default_callbacks(kwargs.get("callbacks"))
        return super().fit(**kwargs)

    def _check_fit_data(self, kwargs):
        cauchy = any(isinstance(loss, CauchySelectionLoss) for loss in tree.flatten(getattr(self, "loss", None)))
        validation = kwargs.get("validation_data")
        validation = tuple(validation) if isinstance(validation, (list, tuple)) else ()
        named = [("x", kwargs.get("x")), ("y", kwargs.get("y")), ("sample_weight", kwargs.get("sample_weight"))]
        named += [(f"validation_data[{i}]", v) for i, v in enumerate(validation)]
        for name, value in named:
            for array_name, array in _named_arrays(name, value):
                array = ops.convert_to_numpy(array) if not isinstance(array, np.ndarray) else array
                check_finite_array(array_name, array)
                if cauchy and name in ("y", "validation_data[1]"):
                    check_scaled_labels(array_name, array, " for CauchySelectionLoss")

    @staticmethod
    def _with_default_callbacks(callbacks):
        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks
        callbacks = list(callbacks or [])
        if not any(isinstance(cb, NonFiniteLossCheck) for cb in callbacks):
            callbacks.insert(0, NonFiniteLossCheck())
        if not any(isinstance(cb, GammaHistory) for cb in callbacks):
            callbacks.insert(0, GammaHistory())
        return callbacks


def _check_int_tuple(name, value, allow_empty=False, minimum=1):
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers >= {minimum}. Received: {name}={value!r}") from None
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    if not ok or (not values and not allow_empty):
        raise ValueError(f"{name} must be a sequence of integers >= {minimum}. Received: {name}={value!r}")
    return values


def _check_alpha(alpha):
    if alpha is None:
        return 0.0
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"alpha must be None or a finite number >= 0. Received: alpha={alpha!r}")
    return value


def halo_cnn(
    input_shape=(75, 75, 75, 1),
    conv_filters=PAPER_CONV_FILTERS,
    pool_after=PAPER_POOL_AFTER,
    dense_units=PAPER_DENSE_UNITS,
    leaky_alpha=0.03,
    alpha=PAPER_ALPHA,
    conv_type="conv",
    ells=(0,),
    initial_gamma=0.2,
    compile=True,
    learning_rate=5e-5,
    seed=None,
    rotation_invariant=False,
    name="halo_cnn",
):
    """Builds (and by default compiles) the deep-halo CNN.

    Args:
        input_shape: ``(nx, ny, nz, channels)``, channels last.
        conv_filters: filters of each 3^3 convolution (one entry per layer).
            For ``conv_type="multipole"`` a layer outputs
            ``filters * sum_l (2l + 1)`` channels.
        pool_after: one bool per convolution: MaxPooling3D(2, "same") after it.
        dense_units: widths of the hidden Dense layers; the first two carry
            ``L1GroupLasso(alpha)``, any further ones are unregularised.
        leaky_alpha: negative slope of every LeakyReLU (>= 0).
        alpha: regularisation strength (paper 10**-2.5 for raw density,
            10**-4.3 for averaged density); ``None`` or 0 disables it.
        conv_type: ``"conv"`` (keras Conv3D, the paper) or ``"multipole"``
            (:class:`tfhalo.layers.MultipoleConv3D`; ``ells=(0,)`` gives a
            rotation-invariant network of isotropic kernels).
        ells: multipole orders l for ``conv_type="multipole"``.
        initial_gamma: starting Cauchy scale (> 0).
        compile: compile with :func:`compile_halo_cnn` (Adam, amsgrad).
        learning_rate: Adam learning rate when ``compile`` is True.
        seed: integer seed of the Glorot-uniform kernel initialisers (one
            independent seed per layer from ``numpy.random.SeedSequence(seed)``),
            so the same seed gives the same initial network; None draws fresh
            weights. No global RNG is touched.
        rotation_invariant: build a network whose output is exactly invariant
            under the 48 rotations and reflections of the cube (requires
            ``conv_type="multipole"``, ``ells=(0,)`` and a cubic input). The
            paper's Flatten -> Dense head and its "same" max-pooling (whose
            windows start at index 0, so a reflection maps them onto other
            windows) are not symmetric; here each pooling uses windows placed
            symmetrically about the box centre (size 2 on even, size 3 on odd
            grids, stride 2, "valid") and a global average pooling replaces
            Flatten.
        name: model name.

    Returns:
        A :class:`HaloModel` mapping ``(batch, *input_shape)`` to ``(batch, 1)``.

    Example:
        >>> model = halo_cnn()
        >>> sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        2108258
    """
    try:
        input_shape = tuple(input_shape)
    except TypeError:
        input_shape = None
    if (
        input_shape is None
        or len(input_shape) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_shape)
    ):
        raise ValueError(
            f"input_shape must be 4 positive integers (nx, ny, nz, channels). Received: input_shape={input_shape!r}"
        )
    conv_filters = _check_int_tuple("conv_filters", conv_filters)
    try:
        pool_after = tuple(bool(p) for p in pool_after)
    except TypeError:
        raise ValueError(f"pool_after must be a sequence of bools. Received: pool_after={pool_after!r}") from None
    if len(pool_after) != len(conv_filters):
        raise ValueError(
            f"pool_after must have one entry per convolution ({len(conv_filters)}). Received: pool_after={pool_after!r}"
        )
    dense_units = _check_int_tuple("dense_units", dense_units, allow_empty=True)
    if not isinstance(leaky_alpha, (int, float)) or not math.isfinite(leaky_alpha) or leaky_alpha < 0:
        raise ValueError(f"leaky_alpha must be a finite number >= 0. Received: leaky_alpha={leaky_alpha!r}")
    alpha = _check_alpha(alpha)
    if conv_type not in ("conv", "multipole"):
        raise ValueError(f'conv_type must be "conv" or "multipole". Received: conv_type={conv_type!r}')
    ells = _check_int_tuple("ells", ells, minimum=0)
    initial_gamma = _check_positive_finite("initial_gamma", initial_gamma)
    if compile:
        learning_rate = _check_positive_finite("learning_rate", learning_rate)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative integer. Received: seed={seed!r}")
    if rotation_invariant:
        if conv_type != "multipole" or tuple(ells) != (0,):
            raise ValueError(
                'rotation_invariant=True needs conv_type="multipole" and ells=(0,). '
                f"Received: conv_type={conv_type!r}, ells={ells!r}"
            )
        if len(set(input_shape[:3])) != 1:
            raise ValueError(
                f"rotation_invariant=True needs a cubic input. Received: input_shape={input_shape!r}"
            )
    n_kernels = len(conv_filters) + len(dense_units) + 1
    layer_seeds = iter(
        [None] * n_kernels if seed is None else np.random.SeedSequence(int(seed)).generate_state(n_kernels)
    )

    def kernel_initializer():
        layer_seed = next(layer_seeds)
        if layer_seed is None:
            return "glorot_uniform"
        return keras.initializers.GlorotUniform(seed=int(layer_seed))

    def conv_regularizer():
        return keras.regularizers.L2(alpha) if alpha > 0 else None

    def dense_regularizer():
        return L1GroupLasso(alpha) if alpha > 0 else None

    inputs = keras.Input(shape=input_shape, name="density")
    x = inputs
    for i, (filters, pool) in enumerate(zip(conv_filters, pool_after), start=1):
        if conv_type == "conv":
            conv = keras.layers.Conv3D(
                filters,
                3,
                padding="same",
                kernel_initializer=kernel_initializer(),
                kernel_regularizer=conv_regularizer(),
                name=f"conv{i}",
            )
        else:
            conv = MultipoleConv3D(
                filters,
                ells=ells,
                kernel_size=3,
                padding="same",
                kernel_initializer=kernel_initializer(),
                kernel_regularizer=conv_regularizer(),
                name=f"conv{i}",
            )
        x = conv(x)
        x = keras.layers.LeakyReLU(negative_slope=leaky_alpha, name=f"conv{i}_act")(x)
        if pool and not rotation_invariant:
            x = keras.layers.MaxPooling3D(2, padding="same", name=f"pool{i}")(x)
        elif pool and x.shape[1] > 1:
            window = 2 if x.shape[1] % 2 == 0 else 3
            x = keras.layers.MaxPooling3D(window, strides=2, padding="valid", name=f"pool{i}")(x)
    if rotation_invariant:
        x = keras.layers.GlobalAveragePooling3D(name="global_average")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units, start=1):
        regularizer = dense_regularizer() if i <= 2 else None
        x = keras.layers.Dense(
            units, kernel_initializer=kernel_initializer(), kernel_regularizer=regularizer, name=f"dense{i}"
        )(x)
        x = keras.layers.LeakyReLU(negative_slope=leaky_alpha, name=f"dense{i}_act")(x)
    x = keras.layers.Dense(1, kernel_initializer=kernel_initializer(), name="prediction")(x)
    outputs = CauchyScale(initial_gamma, name="cauchy_scale")(x)
    model = HaloModel(inputs, outputs, name=name)
    if compile:
        compile_halo_cnn(model, learning_rate=learning_rate)
    return model


def compile_halo_cnn(model, learning_rate=5e-5, amsgrad=True, penalty_strength=100.0, **compile_kwargs):
    """Compiles ``model`` with Adam and :class:`~tfhalo.losses.CauchySelectionLoss`.

    Args:
        model: a :class:`HaloModel` (or any model with one CauchyScale layer;
            the loss is bound to it here).
        learning_rate: Adam learning rate (paper 5e-5).
        amsgrad: use the AMSGrad variant (paper: True).
        penalty_strength: curvature of the loss penalty outside [-1, 1].
        **compile_kwargs: passed on to ``model.compile`` (e.g. ``metrics``).

    Returns:
        The model (compiled in place).
    """
    learning_rate = _check_positive_finite("learning_rate", learning_rate)
    loss = CauchySelectionLoss(penalty_strength=penalty_strength).bind(find_cauchy_scale(model))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, amsgrad=bool(amsgrad)),
        loss=loss,
        **compile_kwargs,
    )
    return model


__all__ = [
    "GammaHistory", "HaloModel", "NonFiniteLossCheck", "NonFiniteLossError", "compile_halo_cnn", "find_cauchy_scale",
    "halo_cnn",
]
