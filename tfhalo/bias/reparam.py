"""A fixed smooth reparametrisation that straightens the neural bias posterior.

The NPE summary is ``psi = softplus(u)``, ``u = w . x + b``, and the mixture
head only sees ``c psi + d``.  Where ``u`` is negative ``psi ~ e^b e^{w.x}``,
so ``(b + t, c e^{-t})`` leaves the likelihood unchanged: the posterior is a
long curved ridge in ``(b, c)``, bounded only by the Normal(0, 10^2) prior on
``c``, along which HMC with any constant mass matrix random-walks.

:class:`PsiScaleReparametrization` samples ``c' = c s(b)`` instead of ``c``,
with ``s(b) = softplus(b + shift)`` the typical scale of ``psi``; ``shift`` is
fixed at the MAP (median ``u`` minus ``b``).  The map is an exact, smooth
bijection (``s > 0``) with ``ln |d theta / d v| = -n_out sum_f ln s(b_f)``, so the
chain on ``v`` targets exactly the same posterior of ``theta``; the ridge
becomes nearly straight (``c'`` is what the data fix).  Diagnostics are
computed on ``theta``, the model's own parameters.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _softplus_np(x):
    return np.logaddexp(0.0, x)


class PsiScaleReparametrization:
    """``theta = forward(v)``: divide the mixture-head kernel rows by ``softplus(b_f + shift_f)``.

    Args:
        likelihood: a :class:`~tfhalo.bias.likelihood.NeuralBiasLikelihood`
            (its model's parameter layout is used).
        theta_ref: ``(P,)`` reference parameters (the MAP) fixing ``shift``.

    Attributes:
        shift: ``(F,)`` per NPE feature.
        bias_index: ``(F,)`` flat indices of the NPE biases ``b_f``.
        kernel_index: ``(F, 3K)`` flat indices of the head kernel rows.

    Example:
        >>> rep = PsiScaleReparametrization(like, fit.theta)
        >>> v = rep.inverse(fit.theta)
        >>> np.allclose(rep.forward(v).numpy(), fit.theta)
        True
    """

    def __init__(self, likelihood, theta_ref):
        model = likelihood.model
        layout = likelihood.layout
        theta_ref = np.asarray(theta_ref, np.float64).reshape(-1)
        if theta_ref.shape[0] != layout.size:
            raise ValueError(f"theta_ref must have {layout.size} entries. Received: shape={theta_ref.shape}")
        if not model.npe.use_bias:
            raise ValueError("PsiScaleReparametrization needs an NPE with a bias. Received: use_bias=False")
        starts = dict(zip([id(v) for v in model.trainable_variables], layout.offsets[:-1]))
        b0 = int(starts[id(model.npe.bias)])
        k0 = int(starts[id(model.head.kernel)])
        n_feat, n_out = (int(s) for s in model.head.kernel.shape)
        if int(np.prod(model.npe.bias.shape)) != n_feat:
            raise ValueError("PsiScaleReparametrization needs one NPE bias per head input feature. Received: "
                             f"bias shape {tuple(model.npe.bias.shape)}, head kernel shape {(n_feat, n_out)}")
        self.size = layout.size
        self.bias_index = np.arange(b0, b0 + n_feat)
        self.kernel_index = (k0 + np.arange(n_feat * n_out)).reshape(n_feat, n_out)
        psi = likelihood.per_voxel(theta_ref)["psi"].reshape(-1, n_feat)
        u = np.log(np.expm1(np.maximum(psi, 1e-300)))  # softplus^-1
        self.shift = np.median(u, axis=0) - theta_ref[self.bias_index]
        # theta_k = sum_i M_ki v_i for the kernel entries, scaled below.
        self._feature_of = np.full(self.size, -1)
        for f in range(n_feat):
            self._feature_of[self.kernel_index[f]] = f
        self.n_out = n_out

    def _scale_np(self, b):
        return _softplus_np(b + self.shift)

    def inverse(self, theta) -> np.ndarray:
        """``(..., P)`` theta -> v (NumPy, float64)."""
        theta = np.array(theta, np.float64)
        scale = self._scale_np(theta[..., self.bias_index])  # (..., F)
        for f in range(len(self.bias_index)):
            theta[..., self.kernel_index[f]] *= scale[..., f:f + 1]
        return theta

    def forward(self, v):
        """``(..., P)`` v -> theta (TensorFlow, differentiable)."""
        v = tf.convert_to_tensor(v)
        scale = tf.math.softplus(tf.gather(v, self.bias_index, axis=-1) + tf.constant(self.shift, v.dtype))
        factor = tf.ones_like(v)
        idx = self._feature_of
        # Per-entry divisor: the scale of its feature for kernel entries, 1 elsewhere.
        cols = [tf.ones_like(v[..., 0]) if idx[i] < 0 else scale[..., int(idx[i])] for i in range(self.size)]
        factor = tf.stack(cols, axis=-1)
        return v / factor

    def forward_np(self, v) -> np.ndarray:
        return np.asarray(self.forward(tf.constant(np.asarray(v, np.float64))), np.float64)

    def log_det_jacobian(self, v):
        """``ln |d theta / d v|`` per leading index: ``-n_out sum_f ln s(b_f)``."""
        v = tf.convert_to_tensor(v)
        scale = tf.math.softplus(tf.gather(v, self.bias_index, axis=-1) + tf.constant(self.shift, v.dtype))
        return -float(self.n_out) * tf.reduce_sum(tf.math.log(scale), axis=-1)

    def wrap(self, log_prob_fn):
        """``v -> ln p(theta(v)) + ln |d theta / d v|``: the target on v."""

        def target(v):
            return log_prob_fn(self.forward(v)) + self.log_det_jacobian(v)

        return target
