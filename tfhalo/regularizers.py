"""Group-Lasso regularisers of the deep-halo CNN (Lucie-Smith et al. 2020).

* :class:`GroupLasso` ``factor * sum_i ||W_i||_2``: one group per input neuron,
  i.e. per row of an ``(in, out)`` Dense kernel. Driving a whole row to zero
  switches that input off, which is how the paper prunes the flattened features.
* :class:`L1GroupLasso` ``l1 * sum|w| + group * sum_i ||W_i||_2``: the paper's
  regulariser of the first two Dense layers (one alpha for both terms).

The paper's convolution kernels use ``alpha * sum(w^2)`` (no 1/2), which is
exactly ``keras.regularizers.L2(alpha)``; :func:`conv_l2` returns it.

Kernels of rank > 2 are grouped by their last axis: the kernel is viewed as
``(-1, out)`` and each row (one input channel at one kernel offset) is a group.

Reference:
    Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
    insights into cosmological structure formation", arXiv:2011.10577.
"""

import math

import keras
from keras import ops


def _check_factor(name, value):
    """Returns ``float(value)``; raises ValueError unless finite and >= 0."""
    try:
        fvalue = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0. Received: {name}={value!r}") from None
    if not math.isfinite(fvalue) or fvalue < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0. Received: {name}={value!r}")
    return fvalue


def _row_norms(x):
    """L2 norm of each row of ``x`` viewed as ``(-1, x.shape[-1])``; rank >= 1."""
    if len(x.shape) < 2:
        x = ops.reshape(x, (1, -1))
    else:
        x = ops.reshape(x, (-1, x.shape[-1]))
    squared = ops.sum(ops.square(x), axis=-1)
    nonzero = squared > 0
    # sqrt'(0) is infinite: take the root of a safe value and select, so an
    # all-zero row contributes 0 with gradient 0 (the subgradient at 0)
    # instead of NaN.
    safe = ops.where(nonzero, squared, ops.ones_like(squared))
    return ops.where(nonzero, ops.sqrt(safe), ops.zeros_like(squared))


@keras.saving.register_keras_serializable(package="tfhalo")
class GroupLasso(keras.regularizers.Regularizer):
    """Group-Lasso penalty ``factor * sum_i ||W_i||_2`` over kernel rows.

    Args:
        factor: penalty strength, finite and >= 0.

    Shapes: a Dense kernel ``(in, out)`` has ``in`` groups; a kernel of any
    other rank is viewed as ``(-1, out)``. Returns a scalar.

    Example:
        >>> layer = keras.layers.Dense(8, kernel_regularizer=GroupLasso(1e-3))
    """

    def __init__(self, factor=0.01):
        self.factor = _check_factor("factor", factor)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        return ops.convert_to_tensor(self.factor, dtype=x.dtype) * ops.sum(_row_norms(x))

    def get_config(self):
        return {"factor": self.factor}


@keras.saving.register_keras_serializable(package="tfhalo")
class L1GroupLasso(keras.regularizers.Regularizer):
    """The paper's Dense regulariser ``l1 * sum|w| + group * sum_i ||W_i||_2``.

    Args:
        factor: L1 strength alpha, finite and >= 0.
        group_factor: group-Lasso strength; ``None`` (default) uses ``factor``,
            as in the paper (one alpha for both terms).

    Shapes: as :class:`GroupLasso`. Returns a scalar.

    Example:
        >>> layer = keras.layers.Dense(256, kernel_regularizer=L1GroupLasso(10**-2.5))
    """

    def __init__(self, factor=0.01, group_factor=None):
        self.factor = _check_factor("factor", factor)
        self.group_factor = self.factor if group_factor is None else _check_factor("group_factor", group_factor)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        l1 = ops.convert_to_tensor(self.factor, dtype=x.dtype) * ops.sum(ops.abs(x))
        group = ops.convert_to_tensor(self.group_factor, dtype=x.dtype) * ops.sum(_row_norms(x))
        return l1 + group

    def get_config(self):
        return {"factor": self.factor, "group_factor": self.group_factor}


def conv_l2(factor):
    """The paper's convolution-kernel penalty ``factor * sum(w^2)`` (no 1/2).

    Args:
        factor: finite and >= 0.

    Returns:
        ``keras.regularizers.L2(factor)``, which computes exactly that sum.
    """
    return keras.regularizers.L2(_check_factor("factor", factor))


__all__ = ["GroupLasso", "L1GroupLasso", "conv_l2"]
