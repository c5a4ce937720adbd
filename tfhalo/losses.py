"""Cauchy selection likelihood of the deep-halo CNN (Lucie-Smith et al. 2020).

Predictions ``y`` and truths ``d`` are both scaled to [-1, 1]. Inside the
boundaries the loss is the negative log of a Cauchy of scale gamma centred on
``y`` and truncated to [-1, 1] (constants dropped)::

    L(y) = ln gamma + ln(1 + r^2) + ln[arctan((1 - y)/gamma) + arctan((1 + y)/gamma)],
    r = (d - y) / gamma,                                         |y| <= 1.

Outside, with ``b = sign(y)``, ``t = |y| - 1 > 0`` and ``s = b L'(b)`` (the
inside slope at the boundary, pointing outwards), the loss is continued with
the same value and slope at ``y = b`` plus a steep penalty that grows linearly
from t = 1 on, so the loss and its gradients are finite for every finite ``y``
(the authors' exp(exp(y)) penalty overflows float32 above |y| ~ 4.5)::

    L(y) = L(b) + s t / (1 + t / gamma) + k [min(t, 1)^2 + 2 max(t - 1, 0)],   |y| > 1.

The slope-matching term has slope ``s`` at t = 0 and is bounded by
``|s| gamma <= 1.7``: inside, the loss varies on the scale gamma near the edges
(|s| grows like 1/gamma), and outside it may dip by at most that much before
the penalty takes over. A plain ``s t`` (like the authors' ``A y^2``
continuation) dips by ~|s|^2 / 4k, hundreds of nats for gamma = 1e-3 and a
truth near the edge, which would pull predictions out of the box. The far-out
slope is ``2k`` for any gamma.

The loss is written without ``where``: the inside branch is evaluated at
``clip(y, -1, 1)`` and the outside terms vanish (with zero gradient) for
``t <= 0``, so no unused branch can inject a NaN gradient.

Labels: the truths ``d`` must lie in [-1, 1] (up to ``LABEL_TOLERANCE``, a
few float32 roundings), where the truncated Cauchy has its support; a label
outside, or NaN, means the labels were scaled with another range (e.g. a
:class:`~tfhalo.data.LabelScaler` fitted on the training set applied to a
validation set reaching beyond it). When the label values are available
(eager calls) the loss raises ``ValueError`` naming the first bad label. Inside
a compiled step (``tf.function``, ``jax.jit``, so in ``model.fit``) no value
can be looked at, and Keras has no backend-independent assertion op: the loss
of each bad label is NaN instead (with zero gradient, so the valid labels'
gradients stay clean), which :class:`tfhalo.models.HaloModel.fit` turns into an
error naming the epoch and batch.

How gamma reaches the loss: gamma lives in a :class:`tfhalo.layers.CauchyScale`
layer of the model (a trainable weight). A :class:`CauchySelectionLoss` is
*bound* to that layer: :class:`tfhalo.models.HaloModel` binds every
``CauchySelectionLoss`` it was compiled with each time it computes a loss, so
``model.compile(optimizer, loss=CauchySelectionLoss())`` just works, also after
``keras.saving.load_model``. The loss reads ``layer.gamma`` inside
``Model.compute_loss``; under the JAX backend Keras runs ``compute_loss`` in a
``StatelessScope`` that maps the model's variables to the traced values, so the
gradient reaches gamma there too. For a plain functional model call
``loss.bind(scale_layer)`` yourself, or give a fixed ``scale``.
"""

import keras
import numpy as np
from keras import ops

from tfhalo.layers.cauchy import CauchyScale, _check_positive_finite

#: How far beyond [-1, 1] a label may lie: a few float32 roundings of a min-max scaling.
LABEL_TOLERANCE = 1e-6


def check_scaled_labels(name, values, purpose=""):
    """``values`` if every label lies in [-1, 1] (within ``LABEL_TOLERANCE``) and none is NaN.

    Args:
        name: the argument named in the message.
        values: labels, any shape (array-like with values, not a traced tensor).
        purpose: appended to "must be labels scaled to [-1, 1]" in the message.

    Raises:
        ValueError: e.g. ``y_true must be labels scaled to [-1, 1]. Received: 1 of 4
            labels outside it, first y_true[2]=1.5``.

    Example:
        >>> check_scaled_labels("y", np.array([-1.0, 0.2, 1.0])).shape
        (3,)
    """
    values = np.asarray(values)
    bad = ~(np.abs(values.astype(np.float64)) <= 1.0 + LABEL_TOLERANCE)  # NaN compares False
    if np.any(bad):
        first = np.unravel_index(int(np.flatnonzero(bad)[0]), values.shape)
        raise ValueError(
            f"{name} must be labels scaled to [-1, 1]{purpose}. Received: {int(bad.sum())} of {values.size} "
            f"labels outside it, first {name}[{', '.join(str(int(i)) for i in first)}]={float(values[first]):.6g}"
        )
    return values


def _values_now(x):
    """``x`` as a NumPy array if its values exist now; None for a symbolic or traced tensor."""
    if keras.backend.is_keras_tensor(x):
        return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except (TypeError, RuntimeError, AttributeError, ValueError):
        # A tf.function graph tensor raises NotImplementedError (a RuntimeError),
        # a JAX tracer TracerArrayConversionError (a TypeError).
        return None


def _cauchy_inside(y, d, gamma):
    """Inside branch L(y) for |y| <= 1 (elementwise)."""
    r = (d - y) / gamma
    # Both arctan arguments are >= 0 for |y| <= 1: a sum of non-negative terms,
    # no cancellation even for small gamma.
    norm = ops.arctan((1.0 - y) / gamma) + ops.arctan((1.0 + y) / gamma)
    return ops.log(gamma) + ops.log1p(ops.square(r)) + ops.log(norm)


def _cauchy_inside_slope(b, d, gamma):
    """Analytic dL/dy of the inside branch at y = b (b = +-1)."""
    r = (d - b) / gamma
    a_plus = (1.0 - b) / gamma
    a_minus = (1.0 + b) / gamma
    norm = ops.arctan(a_plus) + ops.arctan(a_minus)
    dnorm = (1.0 / (1.0 + ops.square(a_minus)) - 1.0 / (1.0 + ops.square(a_plus))) / gamma
    return -2.0 * r / (gamma * (1.0 + ops.square(r))) + dnorm / norm


def cauchy_selection_loss(y_true, y_pred, gamma, penalty_strength=100.0):
    """Elementwise Cauchy selection loss with the C1 boundary penalty.

    Args:
        y_true: truths d scaled to [-1, 1], any shape broadcastable with y_pred.
        y_pred: predictions y (any finite value), e.g. shape ``(batch, 1)``.
        gamma: Cauchy scale, positive scalar (tensor or float).
        penalty_strength: curvature k of the penalty outside [-1, 1]; the
            penalty is k t^2 for t = |y| - 1 <= 1 and k (2t - 1) beyond.

    Returns:
        Tensor of the broadcast shape of ``y_true`` and ``y_pred``: the loss
        per element (not reduced); NaN where a traced label is outside [-1, 1].

    Raises:
        ValueError: a label outside [-1, 1] or NaN, when the labels have values
            (not inside a compiled step; see the module docstring).

    Example:
        >>> import numpy as np
        >>> loss = cauchy_selection_loss(np.zeros(3), np.array([0.0, 0.5, 3.0]), 0.2)
    """
    labels = _values_now(y_true)
    if labels is not None:
        check_scaled_labels("y_true", labels)
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if keras.backend.is_float_dtype(y_pred.dtype) else keras.backend.floatx()
    y = ops.cast(y_pred, dtype)
    d = ops.cast(y_true, dtype)
    # Bad labels are replaced by 0 for the computation (so their gradient is
    # exactly zero, not 0 * NaN) and their loss is set to NaN at the end.
    valid = ops.abs(d) <= 1.0 + LABEL_TOLERANCE
    d = ops.where(valid, d, ops.zeros_like(d))
    # A Python float must not pass through a float32 tensor on its way to float64.
    gamma = ops.convert_to_tensor(gamma, dtype=dtype) if isinstance(gamma, (int, float)) else ops.cast(gamma, dtype)
    inside = _cauchy_inside(ops.clip(y, -1.0, 1.0), d, gamma)
    b = ops.where(y >= 0, ops.ones_like(y), -ops.ones_like(y))
    t = ops.relu(ops.abs(y) - 1.0)
    outward_slope = b * _cauchy_inside_slope(b, d, gamma)
    penalty = penalty_strength * (ops.square(ops.minimum(t, 1.0)) + 2.0 * ops.relu(t - 1.0))
    loss = inside + outward_slope * t / (1.0 + t / gamma) + penalty
    return ops.where(valid, loss, ops.full_like(loss, float("nan")))


@keras.saving.register_keras_serializable(package="tfhalo")
class CauchySelectionLoss(keras.losses.Loss):
    """Cauchy selection likelihood with a trainable (or fixed) scale gamma.

    Mean over the batch (``reduction="sum_over_batch_size"``) of
    :func:`cauchy_selection_loss`.

    Args:
        scale: ``None`` (default) to use the trainable gamma of the model's
            :class:`~tfhalo.layers.CauchyScale` layer (bound automatically by
            :class:`tfhalo.models.HaloModel`, or with :meth:`bind`), or a fixed
            positive float gamma.
        penalty_strength: curvature k of the penalty outside [-1, 1] (> 0).
        reduction, name, dtype: as for ``keras.losses.Loss``.

    Example:
        >>> import tfhalo.models
        >>> model = tfhalo.models.halo_cnn(input_shape=(9, 9, 9, 1), conv_filters=(2,),
        ...                                pool_after=(True,), dense_units=(4,), compile=False)
        >>> model.compile(optimizer="adam", loss=CauchySelectionLoss())
    """

    def __init__(
        self,
        scale=None,
        penalty_strength=100.0,
        reduction="sum_over_batch_size",
        name="cauchy_selection_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.scale = None if scale is None else _check_positive_finite("scale", scale)
        self.penalty_strength = _check_positive_finite("penalty_strength", penalty_strength)
        self._scale_layer = None

    def bind(self, scale_layer):
        """Takes gamma from ``scale_layer`` (a CauchyScale) from now on; returns self."""
        if not isinstance(scale_layer, CauchyScale):
            raise ValueError(
                f"scale_layer must be a tfhalo.layers.CauchyScale. Received: scale_layer={scale_layer!r}"
            )
        if self.scale is not None:
            raise ValueError(f"This loss has a fixed scale and cannot be bound. Received: scale={self.scale}")
        self._scale_layer = scale_layer
        return self

    @property
    def gamma(self):
        """The gamma the loss uses now (float or tensor)."""
        if self.scale is not None:
            return self.scale
        if self._scale_layer is None:
            raise ValueError(
                "CauchySelectionLoss has no scale: compile a tfhalo.models.HaloModel containing a "
                "CauchyScale layer, call loss.bind(scale_layer), or pass scale=<float>. Received: scale=None"
            )
        return self._scale_layer.gamma

    def call(self, y_true, y_pred):
        labels = _values_now(y_true)
        if labels is not None:  # checked here too, to name the labels in the caller's shape
            check_scaled_labels("y_true", labels)
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        # Keras feeds (batch,) labels with (batch, 1) predictions: align ranks
        # instead of broadcasting to (batch, batch).
        if len(y_true.shape) == len(y_pred.shape) - 1:
            y_true = ops.expand_dims(y_true, -1)
        elif len(y_pred.shape) == len(y_true.shape) - 1:
            y_pred = ops.expand_dims(y_pred, -1)
        return cauchy_selection_loss(y_true, y_pred, self.gamma, self.penalty_strength)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "penalty_strength": self.penalty_strength})
        return config


__all__ = ["LABEL_TOLERANCE", "CauchySelectionLoss", "cauchy_selection_loss", "check_scaled_labels"]
