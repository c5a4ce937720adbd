"""The trainable Cauchy scale gamma of the deep-halo selection likelihood.

:class:`CauchyScale` is an identity layer placed at the end of a model: it
leaves the predictions untouched and only owns the scalar gamma used by
:class:`tfhalo.losses.CauchySelectionLoss`. Keeping gamma in a layer (rather
than in the loss) makes it an ordinary trainable weight of the model, so it is
counted by ``model.count_params()``, updated by the optimizer, saved in
``.keras`` files and carried by ``model.export``, on every Keras backend.

gamma is positive by construction::

    gamma = s0 * exp(u / s0)        s0 = initial_scale, u trainable, u0 = 0

so it starts at exactly ``initial_scale``, and d gamma / d u = gamma / s0 is 1
at the start: an optimizer step on ``u`` moves gamma by about the learning rate,
as in the paper, where gamma itself was the trained variable (clipped to
[0, 2], which allowed gamma = 0).

Reference (the Cauchy selection likelihood and its scale gamma):
    Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
    insights into cosmological structure formation", arXiv:2011.10577.
"""

import math

import keras
from keras import ops


def _check_positive_finite(name, value):
    """Returns ``float(value)`` or raises ValueError naming ``name``."""
    try:
        fvalue = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number. Received: {name}={value!r}") from None
    if not math.isfinite(fvalue) or fvalue <= 0.0:
        raise ValueError(f"{name} must be a positive finite number. Received: {name}={value!r}")
    return fvalue


@keras.saving.register_keras_serializable(package="tfhalo")
class CauchyScale(keras.layers.Layer):
    """Identity layer that owns the trainable Cauchy scale gamma > 0.

    Put it after the model's last Dense layer; :class:`tfhalo.models.HaloModel`
    finds it and hands gamma to :class:`tfhalo.losses.CauchySelectionLoss`.

    Args:
        initial_scale: starting gamma, a positive finite float (paper: 0.2).
        trainable: whether gamma is learned (default True).
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``, ...).

    Input shape: any, e.g. ``(batch, 1)``. Output: the input, unchanged.

    Example:
        >>> inputs = keras.Input((4,))
        >>> scale = CauchyScale(0.2)
        >>> outputs = scale(keras.layers.Dense(1)(inputs))
        >>> float(keras.ops.convert_to_numpy(scale.gamma))  # doctest: +ELLIPSIS
        0.2...
    """

    def __init__(self, initial_scale=0.2, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = _check_positive_finite("initial_scale", initial_scale)
        # Weight-less layers would otherwise be built lazily; gamma must exist
        # before the first call so that a loss can read it.
        self.scale_parameter = self.add_weight(
            name="scale_parameter",
            shape=(),
            initializer="zeros",
            trainable=True,
            dtype="float32",
        )
        self.built = True

    def build(self, input_shape):
        self.built = True

    @property
    def gamma(self):
        """The current scale gamma, a float32 scalar tensor (> 0)."""
        s0 = self.initial_scale
        return s0 * ops.exp(self.scale_parameter / s0)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["initial_scale"] = self.initial_scale
        return config
