"""Sampling coordinates in which the neural bias posterior is nearly Gaussian.

Why.  The NPE gives ``u = w . S(x) + b`` (``S``: the ``R`` shell sums of
``log(1 + delta)`` around a voxel, one radial weight each) and
``psi = softplus(u)``; the mixture head only sees ``z_j = c_j psi + d_j``.
Over the range of ``u`` the data span, ``z_j`` is nearly linear in ``u``, so
``(w, b, c, d)`` carry two near-symmetries: ``(k w, c / k)`` (the scale of
``psi``) and, where ``u < 0`` and ``psi ~ e^b e^{w.S}``, ``(b + t, c e^{-t})``.
The posterior of the model's own 17 parameters is therefore a long curved
ridge bounded only by the Normal(0, 10^2) prior, along which HMC with any
constant mass matrix random-walks (measured: split R-hat 1.3-1.9, ESS < 15).

What.  :class:`LocalLinearReparametrization` samples, per NPE feature ``f``,

* ``m_f``: the mean of ``u_f`` over the training voxels (instead of ``b_f``);
* ``s_f = sqrt(w_f^T Sigma w_f)``, its standard deviation (``Sigma``: the
  covariance of ``S`` over the training voxels), written as
  ``w_f = e^{lambda_f} (w_hat_f + Q_f eta_f)`` with ``w_hat_f`` the MAP direction
  (``Sigma``-normalised), ``Q_f`` a ``Sigma``-orthonormal basis of its
  complement and ``eta_f`` the ``R - 1`` direction coordinates;
* ``xi_f = lambda_f - softplus(m_f)``: ``ln`` of the curvature scale
  ``s_f (1 - sigmoid(m_f))`` of ``psi`` in the standardised environment, the
  combination of ``(lambda_f, m_f)`` the data fix;

and per head output ``j``: its slopes ``B_fj = c_fj sigmoid(m_f) s_f`` per
standard deviation of ``u_f`` at the mean environment, and its value
``A_j = z_j(g = a)`` at the halos' mean environment: ``g_f = (psi_f -
softplus(m_f)) / (sigmoid(m_f) s_f)`` puts a voxel in slope units, so
``z_j = sum_f c_fj softplus(m_f) + d_j + sum_f B_fj g_f``, and the anchor ``a_f``
is the mean of ``g_f`` over the catalogue's halos at the MAP.  The catalogue
pins the mass function down where its halos are, which need not be the mean
voxel (measured: halos at ``g = -1.4``); values read at ``g = 0`` are an
extrapolation whose errors the slopes must cancel: a curved ridge, locally
~40 times narrower than the posterior's extent (on a quick catalogue the
median largest eigenvalue of the Hessian in posterior-covariance units was
~1900 with values read at ``g = 0``, ~70 at the halos' mean).  The first mixture component, which
usually sits below the mass threshold with only its tail seen, is then
described at the anchor by its tail above the threshold instead of
its (amplitude, mean, width) pre-activations: with ``D = mu_1 - ln M_th``,
``ln n_1 = c0 + c1 y - y^2 / (2 sigma_1^2)`` in ``y = ln M - ln M_th`` (up to a
constant), so the slots hold ``c0 = ln alpha_1 - D - ln sigma_1 - D^2 / (2 sigma_1^2)``,
``c1 = D / sigma_1^2`` and ``ln sigma_1``; sliding the component further below
the threshold (a wider Gaussian with the same tail) is then a straight line in
``ln sigma_1`` instead of a parabola.  The second mean's increment slot holds
``g_2 + D`` (``= mu_2 - ln M_th`` where the softplus increment is linear), so
the second component stays put while the first slides.  These are what the catalogue constrains;
the one direction it barely sees (``m_f`` along the ridge) is bounded smoothly
by the prior.

The map is a smooth bijection on ``{w_hat_f^T Sigma w_f > 0}`` (the half-space
of radial weights within 90 degrees of the MAP's direction, in ``Sigma``'s
metric); ``ln |d theta / d v| = sum_f [R lambda_f - n_out (ln sigmoid(m_f) +
ln s_f)] + ln|d(head pre-activations) / d(c0, c1, ln sigma_1)| + const``, so a
chain on ``v`` with the Jacobian-corrected target samples exactly the
posterior of ``theta``.  Diagnostics are computed on
``theta``, the model's own parameters.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _softplus_np(x):
    return np.logaddexp(0.0, x)


def _log_sigmoid_np(x):
    return -np.logaddexp(0.0, -x)


class Reparametrization:
    """A fixed bijection ``theta = forward(v)``; subclasses define ``_forward`` and ``inverse``.

    ``_forward(v)`` returns ``(theta, ln |d theta / d v|)`` in one pass (TensorFlow,
    any leading batch shape); ``inverse(theta)`` is NumPy.
    """

    size: int

    def _forward(self, v):
        raise NotImplementedError

    def inverse(self, theta) -> np.ndarray:
        raise NotImplementedError

    def forward(self, v):
        """``(..., P)`` v -> theta (TensorFlow, differentiable)."""
        return self._forward(v)[0]

    def forward_np(self, v) -> np.ndarray:
        return np.asarray(self.forward(tf.constant(np.asarray(v, np.float64))), np.float64)

    def log_det_jacobian(self, v):
        """``ln |d theta / d v|`` (up to a constant) per leading index."""
        return self._forward(v)[1]

    def wrap(self, log_prob_fn):
        """``v -> ln p(theta(v)) + ln |d theta / d v|``: the target on v."""

        def target(v):
            theta, log_det = self._forward(v)
            return log_prob_fn(theta) + log_det

        return target


class LocalLinearReparametrization(Reparametrization):
    """``theta = forward(v)`` for a NeuralBiasModel with an ``l = 0`` NPE.

    Args:
        likelihood: a :class:`~tfhalo.bias.likelihood.NeuralBiasLikelihood`;
            its training grids give the shell-sum mean and covariance.
        theta_ref: ``(P,)`` reference parameters (the MAP): fixes the
            direction ``w_hat_f`` of each feature's radial weights.
        anchor: ``(F,)`` environment, in slope units ``g_f``, at which the head's
            values are read (default: the mean over the catalogue's halos
            at ``theta_ref``; 0 is the mean voxel).

    Attributes:
        size: ``P``.
        anchor: ``(F,)`` the environment at which the head's values are read.
        shell_mean: ``(R,)`` mean shell sums over the training voxels.
        shell_cov: ``(R, R)`` their covariance.

    Raises:
        ValueError: the NPE is not a single-input ``l = 0`` layer with a bias,
            ``theta_ref`` has the wrong size or zero radial weights, or ``anchor``
            is not ``F`` finite values.

    Example:
        >>> rep = LocalLinearReparametrization(like, fit.theta)
        >>> v = rep.inverse(fit.theta)
        >>> np.allclose(rep.forward_np(v), fit.theta)
        True
    """

    def __init__(self, likelihood, theta_ref, anchor=None):
        model = likelihood.model
        layout = likelihood.layout
        npe, head = model.npe, model.head
        theta_ref = np.asarray(theta_ref, np.float64).reshape(-1)
        if theta_ref.shape[0] != layout.size:
            raise ValueError(f"theta_ref must have {layout.size} entries. Received: shape={theta_ref.shape}")
        if tuple(npe.ells) != (0,) or not npe.use_bias:
            raise ValueError("LocalLinearReparametrization needs an l=0 NPE with a bias. Received: "
                             f"ells={tuple(npe.ells)}, use_bias={npe.use_bias}")
        weights = [v for v in npe.trainable_variables if "radial" in v.path]
        if len(weights) != 1 or int(weights[0].shape[1]) != 1:
            raise ValueError("LocalLinearReparametrization needs one input channel. Received: "
                             f"{[tuple(v.shape) for v in weights]}")
        starts = dict(zip([id(v) for v in model.trainable_variables], layout.offsets[:-1]))
        n_radial, _, n_feat = (int(s) for s in weights[0].shape)
        n_out = int(head.kernel.shape[1])
        w0, b0 = int(starts[id(weights[0])]), int(starts[id(npe.bias)])
        k0, d0 = int(starts[id(head.kernel)]), int(starts[id(head.bias)])
        # Flat indices (row-major variable layout): radial[r, 0, f], bias[f], kernel[f, j], bias[j].
        self.w_index = w0 + np.arange(n_radial)[:, None] * n_feat + np.arange(n_feat)[None, :]  # (R, F)
        self.b_index = b0 + np.arange(n_feat)
        self.c_index = k0 + np.arange(n_feat * n_out).reshape(n_feat, n_out)
        self.d_index = d0 + np.arange(n_out)
        self.size, self.n_radial, self.n_feat, self.n_out = layout.size, n_radial, n_feat, n_out
        self.n_components = int(head.n_components)
        self.amplitude_shift = float(head.amplitude_shift)
        self.width_shift = float(head.width_shift)

        shells = _shell_sums(likelihood)  # (N_voxels, R)
        self.shell_mean = shells.mean(axis=0)
        self.shell_cov = np.cov(shells, rowvar=False).reshape(n_radial, n_radial)
        w_ref = theta_ref[self.w_index]  # (R, F)
        s_ref = np.sqrt(np.einsum("rf,rq,qf->f", w_ref, self.shell_cov, w_ref))
        if not np.all(s_ref > 0):
            raise ValueError(f"theta_ref has zero radial weights for some NPE feature. Received: w={w_ref.T}")
        self.w_hat = w_ref / s_ref  # (R, F), w_hat^T Sigma w_hat = 1
        # Sigma-orthonormal complement of each w_hat: Q^T Sigma Q = I, Q^T Sigma w_hat = 0.
        chol = np.linalg.cholesky(self.shell_cov)
        self.q = np.empty((n_feat, n_radial, n_radial - 1))
        for f in range(n_feat):
            y = chol.T @ self.w_hat[:, f]  # unit vector in the whitened space
            basis = np.linalg.svd(np.eye(n_radial) - np.outer(y, y))[0][:, : n_radial - 1]
            self.q[f] = np.linalg.solve(chol.T, basis)
        if anchor is None:
            # The halos' mean environment at theta_ref, in slope units g = (psi - softplus(m)) / (sigmoid(m) s).
            offsets = np.cumsum([0] + [d.log_density.size for d in likelihood.data])
            rows = np.concatenate([d.halo_voxel + o for d, o in zip(likelihood.data, offsets)])
            u = shells[rows] @ w_ref + theta_ref[self.b_index]  # (H, F)
            m_ref = self.shell_mean @ w_ref + theta_ref[self.b_index]
            anchor = (_softplus_np(u) - _softplus_np(m_ref)) / (np.exp(_log_sigmoid_np(m_ref)) * s_ref)
            anchor = anchor.mean(axis=0) if len(rows) else np.zeros(n_feat)
        self.anchor = np.asarray(anchor, np.float64).reshape(-1)
        if self.anchor.shape != (n_feat,) or not np.all(np.isfinite(self.anchor)):
            raise ValueError(f"anchor must hold {n_feat} finite values. Received: anchor={anchor}")
        # v layout reuses theta's slots: radial -> (xi, eta), NPE bias -> m, head kernel -> B, head bias -> A.

    def half_space(self, theta) -> np.ndarray:
        """``(..., F)`` ``w_hat_f^T Sigma w_f``: positive where feature ``f``'s radial weights are in the domain."""
        w = np.asarray(theta, np.float64)[..., self.w_index]  # (..., R, F)
        return np.einsum("rf,rq,...qf->...f", self.w_hat, self.shell_cov, w)

    def mirror(self, theta, feature: int = 0) -> np.ndarray:
        """``(P,)`` theta with NPE feature ``feature`` reflected into the other half-space.

        ``u -> 2 m - u`` about its training mean ``m`` (``w -> -w``), with the head's
        slopes flipped and biases shifted so that ``z = c psi + d`` is unchanged where
        ``psi = softplus(u)`` is linear in ``u``.  Where it is not (the softplus
        bends over the voxels' range), the reflected point is a *different* fit of
        about the same quality: the other half-space, which the map here excludes,
        can hold its own mode.  :func:`tfhalo.bias.fit.fit_map` starts an
        optimiser from this point to find it.
        """
        theta = np.asarray(theta, np.float64).reshape(-1)
        if theta.shape[0] != self.size or not 0 <= feature < self.n_feat:
            raise ValueError(f"theta must have {self.size} entries and 0 <= feature < {self.n_feat}. Received: "
                             f"shape={theta.shape}, feature={feature}")
        out = theta.copy()
        w = theta[self.w_index[:, feature]]
        b = theta[self.b_index[feature]]
        c = theta[self.c_index[feature]]
        m = self.shell_mean @ w + b
        out[self.w_index[:, feature]] = -w
        out[self.b_index[feature]] = m + self.shell_mean @ w  # mean of the reflected u is m again
        # softplus(2m - u) ~ softplus(m) - sigmoid(m) (u - m): flipping c and shifting d by
        # 2 c softplus(m) keeps z to first order in (u - m).
        out[self.c_index[feature]] = -c
        out[self.d_index] = theta[self.d_index] + 2.0 * c * _softplus_np(m)
        return out

    # -- NumPy inverse --------------------------------------------------------
    def inverse(self, theta) -> np.ndarray:
        """``(..., P)`` theta -> v (NumPy float64).

        Raises:
            ValueError: some radial weights point more than 90 degrees from the
                MAP direction (outside the map's domain).
        """
        theta = np.asarray(theta, np.float64)
        v = theta.copy()
        w = theta[..., self.w_index]  # (..., R, F)
        b = theta[..., self.b_index]  # (..., F)
        sigma_w = np.einsum("rq,...qf->...rf", self.shell_cov, w)
        scale = self.half_space(theta)  # e^lambda
        if not np.all(scale > 0):
            raise ValueError("theta is outside the reparametrisation's domain (radial weights more than 90 "
                             f"degrees from the reference direction). Received: min w_hat.Sigma.w={scale.min()}")
        lam = np.log(scale)
        eta = np.einsum("frk,...rf->...kf", self.q, sigma_w) / scale[..., None, :]  # (..., R-1, F)
        s = np.sqrt(np.einsum("...rf,...rf->...f", w, sigma_w))
        m = np.einsum("r,...rf->...f", self.shell_mean, w) + b
        xi = lam - _softplus_np(m)
        c = theta[..., self.c_index]  # (..., F, J)
        d = theta[..., self.d_index]  # (..., J)
        big_b = c * (np.exp(_log_sigmoid_np(m)) * s)[..., None]  # (..., F, J)
        big_a = d + np.einsum("...fj,...f->...j", c, _softplus_np(m))  # (..., J)
        # The head's pre-activations at the halos' mean environment, in tail-stage values.
        tail_a = self._tail_np(big_a + np.einsum("...fj,f->...j", big_b, self.anchor))
        v[..., self.w_index[0]] = xi
        v[..., self.w_index[1:]] = eta
        v[..., self.b_index] = m
        v[..., self.c_index] = big_b
        v[..., self.d_index] = tail_a
        return v

    def _tail_np(self, big_a):
        """``(..., J)`` head pre-activations -> tail-stage values (NumPy; inverse of :meth:`_undo_tail`)."""
        big_a = np.array(big_a, np.float64)
        k = self.n_components
        alpha = _softplus_np(big_a[..., 0] + self.amplitude_shift)
        sigma = _softplus_np(big_a[..., 2 * k] + self.width_shift)
        dist = big_a[..., k].copy()
        ell = np.log(sigma)
        big_a[..., 0] = np.log(alpha) - dist - ell - 0.5 * dist**2 / sigma**2
        big_a[..., k] = dist / sigma**2
        big_a[..., 2 * k] = ell
        if k > 1:
            big_a[..., k + 1] += dist  # ~ mu_2 - ln M_th where the increment is large
        return big_a

    # -- TensorFlow forward ---------------------------------------------------
    def _parts(self, v):
        v = tf.convert_to_tensor(v)
        dt = v.dtype
        xi = tf.gather(v, self.w_index[0], axis=-1)  # (..., F)
        eta = tf.gather(v, self.w_index[1:], axis=-1)  # (..., R-1, F)
        m = tf.gather(v, self.b_index, axis=-1)  # (..., F)
        lam = xi + tf.math.softplus(m)
        eta_sq = tf.reduce_sum(tf.square(eta), axis=-2)
        log_s = lam + 0.5 * tf.math.log1p(eta_sq)
        return v, dt, eta, m, lam, log_s

    def _undo_tail(self, big_a):
        """``(..., J)`` tail-stage values -> head pre-activations at the anchor, and ln|Jacobian|."""
        k = self.n_components
        c0, c1, ell = big_a[..., 0], big_a[..., k], big_a[..., 2 * k]
        sigma = tf.exp(ell)
        dist = c1 * tf.square(sigma)
        log_alpha = c0 + dist + ell + 0.5 * c1 * dist
        alpha = tf.exp(log_alpha)
        # softplus^-1(x) = x + ln(1 - e^-x), stable for small and large x.
        log1mexp_alpha = tf.math.log(-tf.math.expm1(-alpha))
        log1mexp_sigma = tf.math.log(-tf.math.expm1(-sigma))
        pre_alpha = alpha + log1mexp_alpha - self.amplitude_shift
        pre_sigma = sigma + log1mexp_sigma - self.width_shift
        columns = [big_a[..., j] for j in range(3 * k)]
        columns[0], columns[k], columns[2 * k] = pre_alpha, dist, pre_sigma
        if k > 1:
            columns[k + 1] = big_a[..., k + 1] - dist  # unit diagonal: no Jacobian term
        # d(pre_alpha, dist, pre_sigma) / d(c0, c1, ell) is triangular.
        log_det = (log_alpha - log1mexp_alpha) + 2.0 * ell + (ell - log1mexp_sigma)
        return tf.stack(columns, axis=-1), log_det

    def _forward(self, v):
        """``(theta, ln |d theta / d v| up to a constant)``, sharing one pass over ``v``."""
        v, dt, eta, m, lam, log_s = self._parts(v)
        direction = tf.constant(self.w_hat, dt) + tf.einsum("frk,...kf->...rf", tf.constant(self.q, dt), eta)
        w = tf.exp(lam)[..., None, :] * direction  # (..., R, F)
        b = m - tf.einsum("r,...rf->...f", tf.constant(self.shell_mean, dt), w)
        big_b = tf.gather(v, self.c_index, axis=-1)  # (..., F, J)
        at_anchor, log_det_tail = self._undo_tail(tf.gather(v, self.d_index, axis=-1))
        big_a = at_anchor - tf.einsum("...fj,f->...j", big_b, tf.constant(self.anchor, dt))
        c = big_b * tf.exp(-tf.math.log_sigmoid(m) - log_s)[..., None]
        d = big_a - tf.einsum("...fj,...f->...j", c, tf.math.softplus(m))
        per_feature = self.n_radial * lam - self.n_out * (tf.math.log_sigmoid(m) + log_s)
        log_det = tf.reduce_sum(per_feature, axis=-1) + log_det_tail
        # Scatter the blocks back into theta's layout (a fixed permutation).
        pieces = [(self.w_index, w), (self.b_index, b), (self.c_index, c), (self.d_index, d)]
        index = np.concatenate([i.reshape(-1) for i, _ in pieces])
        batch = tf.shape(v)[:-1]
        values = tf.concat([tf.reshape(t, tf.concat([batch, [-1]], 0)) for _, t in pieces], axis=-1)
        rest = np.setdiff1d(np.arange(self.size), index)
        if rest.size:
            index = np.concatenate([index, rest])
            values = tf.concat([values, tf.gather(v, rest, axis=-1)], axis=-1)
        return tf.gather(values, np.argsort(index), axis=-1), log_det


def _shell_sums(likelihood) -> np.ndarray:
    """``(N_voxels, R)``: the NPE pre-activation with each radial weight set to 1 alone, bias 0."""
    npe = likelihood.model.npe
    config = dict(npe.get_config(), activation=None, filters=1, name="shell_sums")
    linear = type(npe).from_config(config)
    linear.build((None,) + likelihood.data[0].log_density.shape + (1,))
    radial = [v for v in linear.trainable_variables if "radial" in v.path][0]
    non_trainable = [v.value for v in linear.non_trainable_variables]
    unit_weights = []  # one weight list per radial shell: that shell's weight 1, everything else 0
    for r in range(int(radial.shape[0])):
        values = [np.zeros(tuple(var.shape), np.float64) for var in linear.trainable_variables]
        values[[var is radial for var in linear.trainable_variables].index(True)][r] = 1.0
        unit_weights.append(values)
    outputs = []
    for d in likelihood.data:
        x = d.log_density[None, ..., None].astype(np.float64)
        per_r = [np.asarray(linear.stateless_call(w, non_trainable, x)[0], np.float64).reshape(-1)
                 for w in unit_weights]
        outputs.append(np.stack(per_r, axis=-1))
    return np.concatenate(outputs)
