"""Sampling coordinates in which the neural bias posterior is nearly Gaussian.

The neural bias model of Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche &
Hudson (2020), "Neural physical engines for inferring the halo mass
distribution function", MNRAS 494, 50, arXiv:1909.06379, has near-symmetries
among its own parameters (the scale of the summary ``psi`` against the head's
slopes, and the position of a mixture component below the mass threshold
against its amplitude and width), so its posterior is a long curved ridge on
which HMC with a constant mass matrix random-walks.
:class:`LocalLinearReparametrization` is a ``tfp.bijectors.Bijector`` from
coordinates ``v`` that the catalogue constrains one by one (the mean and spread
of the NPE's pre-activation over the training voxels, the head's slopes per
standard deviation of it, and the first component's tail above the threshold at
the halos' mean environment) to the model's parameters ``theta``.  It is an
exact bijection with an analytic log-Jacobian, so a chain run on ``v`` with
``tfp.mcmc.TransformedTransitionKernel`` samples exactly the posterior of
``theta``.  Learning such a map instead, with a normalising flow, is the idea of
Hoffman, Sountsov, Dillon, Langmore, Tran & Vasudevan (2019), "NeuTra-lizing
bad geometry in Hamiltonian Monte Carlo using neural transport",
arXiv:1903.03704; here the map is derived from the model's structure.

The derivation (the near-symmetries, each coordinate, the anchor, the tail
coordinates, the domain and the Jacobian) is in ``docs/sampling_coordinates.md``.

The map is written in ``keras.ops`` and subclasses the bijector of TFP's
substrate for the Keras backend (:mod:`tfhalo.backend`), so the same class runs
on TensorFlow and on JAX.

Example:
    >>> from tfhalo import backend
    >>> rep = LocalLinearReparametrization(like, fit.theta)
    >>> v = rep.inverse(fit.theta)                      # (P,) float64 backend tensor
    >>> kernel = backend.tfp.mcmc.TransformedTransitionKernel(
    ...     backend.tfp.mcmc.HamiltonianMonteCarlo(like.log_posterior, 0.1, 10), bijector=rep)
"""

from __future__ import annotations

import numpy as np
from keras import ops

from tfhalo import backend
from tfhalo.validation import check_finite_array, check_int

#: What the first radial slot of ``v`` holds per NPE feature: ``"curvature"``, ``xi = lambda -
#: softplus(m)`` (the log curvature scale of ``psi``, fixed by the data near a fit where the
#: softplus bends), or ``"log_scale"``, ``lambda`` itself (the log scale of the radial weights).
#: The change between them is unit-triangular, so the log-Jacobian is the same.
SCALE_COORDINATES = ("curvature", "log_scale")

# Below this log-argument softplus(x) = e^x (1 - e^x / 2 + ...) and its inverse are
# evaluated by their series, so that neither exp(x) underflowing nor log(0) can
# put an inf/NaN into a value or a gradient.
_SERIES_BELOW = -30.0


def _softplus_np(x):
    return np.logaddexp(0.0, x)


def _log_sigmoid_np(x):
    return -np.logaddexp(0.0, -x)


def _log_softplus(x):
    """``ln softplus(x)``, finite for every finite ``x``."""
    series = x - 0.5 * ops.exp(ops.minimum(x, _SERIES_BELOW))
    return ops.where(x < _SERIES_BELOW, series, ops.log(ops.softplus(ops.maximum(x, _SERIES_BELOW))))


def _softplus_inverse_of_exp(log_y):
    """``(softplus^-1(e^log_y), ln d softplus^-1(e^log_y) / d log_y)``, finite for every finite ``log_y``.

    ``softplus^-1(y) = y + ln(1 - e^-y)`` and its log-derivative in ``ln y`` is
    ``ln y - ln(1 - e^-y)``; for tiny ``y`` both are their series in ``y``.
    """
    y = ops.exp(ops.maximum(log_y, _SERIES_BELOW))
    log1mexp = ops.log(-ops.expm1(-y))
    y_small = ops.exp(ops.minimum(log_y, _SERIES_BELOW))
    small = log_y < _SERIES_BELOW
    value = ops.where(small, log_y + 0.5 * y_small, y + log1mexp)
    log_slope = ops.where(small, 0.5 * y_small, log_y - log1mexp)
    return value, log_slope


class LocalLinearReparametrization(backend.tfp.bijectors.Bijector):
    """``theta = forward(v)`` for a neural bias model with an ``l = 0`` NPE, as a TFP bijector.

    ``v`` reuses ``theta``'s slots: per NPE feature ``f`` the first radial weight
    slot holds ``xi_f`` (the log curvature scale of ``psi_f``), the other ``R - 1``
    hold ``eta_f`` (the direction of the radial weights about the reference's),
    the NPE bias slot holds ``m_f`` (the mean pre-activation over the training
    voxels); the head's kernel slots hold ``B_fj`` (slopes per standard deviation
    of the pre-activation) and its bias slots the head's values at the anchor,
    with the first component's amplitude, mean and width replaced by its tail
    above the threshold ``(c0, c1, ln sigma_1)`` and the second mean's increment
    by ``g_2 + D``.  See ``docs/sampling_coordinates.md``.

    The map is a smooth bijection from ``R^P`` onto the half-space
    ``{theta: w_hat_f^T Sigma w_f > 0 for every f}`` (:meth:`half_space`);
    :meth:`mirror` reflects a point into the other half.

    Args:
        likelihood: a :class:`~tfhalo.bias.likelihood.NeuralBiasLikelihood` whose
            model has a single-input ``l = 0`` NPE with a bias; its training grids
            give the shell-sum mean and covariance.
        theta_ref: ``(P,)`` finite reference parameters (the MAP): fix the
            direction ``w_hat_f`` of each feature's radial weights, and the
            default anchor.
        anchor: ``(F,)`` finite environment, in slope units ``g_f``, at which the
            head's values are read (default: the mean over the catalogue's halos
            at ``theta_ref``; 0 is the mean voxel).
        scale_coordinate: what the first radial slot holds: ``"curvature"`` (``xi_f``,
            the default) or ``"log_scale"`` (``lambda_f = xi_f + softplus(m_f)``, the log
            scale of the radial weights); :data:`SCALE_COORDINATES`.  The map and its
            log-Jacobian are the same; ``"log_scale"`` suits a posterior that reaches
            softplus's linear regime (docs/sampling_coordinates.md, "Which scale coordinate").
        validate_args: check inside a compiled TensorFlow function that
            :meth:`inverse`'s argument lies in the domain.  Concrete (eager)
            arguments are always checked, on either backend; a traced JAX
            argument cannot raise, so there it is not checked.
        name: the bijector's name.

    Attributes:
        size: ``P``.
        anchor: ``(F,)`` the environment at which the head's values are read.
        shell_mean: ``(R,)`` mean shell sums over the training voxels.
        shell_cov: ``(R, R)`` their covariance ``Sigma``.
        w_hat: ``(R, F)`` the reference directions, ``w_hat_f^T Sigma w_hat_f = 1``.
        w_index, b_index, c_index, d_index: flat indices of the NPE radial weights
            ``(R, F)``, NPE bias ``(F,)``, head kernel ``(F, J)`` and head bias ``(J,)``.

    Shapes:
        ``forward``: ``(..., P)`` v -> ``(..., P)`` theta; ``inverse`` the reverse;
        ``forward_log_det_jacobian(v, event_ndims=1)``: ``(...)``, the exact
        ``ln |det d theta / d v|``.  All float64 tensors of the Keras backend.

    Raises:
        ValueError: ``likelihood`` is not a neural bias likelihood, its NPE is not
            a single-input ``l = 0`` layer with a bias, ``theta_ref`` is not ``P``
            finite values or has zero radial weights, ``anchor`` is not ``F``
            finite values, or ``scale_coordinate`` is not one of :data:`SCALE_COORDINATES`.

    Example:
        >>> rep = LocalLinearReparametrization(like, fit.theta)
        >>> v = rep.inverse(fit.theta)
        >>> np.allclose(rep.forward(v), fit.theta)
        True
        >>> rep.forward_log_det_jacobian(v, event_ndims=1)   # scalar float64
    """

    def __init__(self, likelihood, theta_ref, anchor=None, scale_coordinate="curvature", validate_args=False,
                 name="local_linear_reparametrization"):
        parameters = dict(locals())
        if scale_coordinate not in SCALE_COORDINATES:
            raise ValueError(f"scale_coordinate must be one of {SCALE_COORDINATES}. Received: "
                             f"scale_coordinate={scale_coordinate!r}")
        self.scale_coordinate = scale_coordinate
        model = getattr(likelihood, "model", None)
        layout = getattr(likelihood, "layout", None)
        if model is None or layout is None or not hasattr(model, "npe") or not hasattr(model, "head"):
            raise ValueError("likelihood must be a NeuralBiasLikelihood of a neural bias model. Received: "
                             f"likelihood={likelihood!r}")
        npe, head = model.npe, model.head
        theta_ref = check_finite_array("theta_ref", np.asarray(theta_ref, np.float64))
        if theta_ref.shape != (layout.size,):
            raise ValueError(f"theta_ref must have shape ({layout.size},). Received: theta_ref.shape={theta_ref.shape}")
        if tuple(npe.ells) != (0,) or not npe.use_bias:
            raise ValueError("LocalLinearReparametrization needs an l=0 NPE with a bias. Received: "
                             f"ells={tuple(npe.ells)}, use_bias={npe.use_bias}")
        weights = [v for v in npe.trainable_variables if "radial" in v.path]
        if len(weights) != 1 or int(weights[0].shape[1]) != 1:
            raise ValueError("LocalLinearReparametrization needs one input channel. Received: radial weights "
                             f"{[tuple(v.shape) for v in weights]}")
        n_radial, _, n_feat = (int(s) for s in weights[0].shape)
        if anchor is not None:
            anchor = check_finite_array("anchor", np.asarray(anchor, np.float64))
            if anchor.shape != (n_feat,):
                raise ValueError(f"anchor must have shape ({n_feat},). Received: anchor={anchor}")
        n_out = int(head.kernel.shape[1])
        self.w_index, self.b_index, self.c_index, self.d_index = npe_head_slots(model, layout)
        self.size, self.n_radial, self.n_feat, self.n_out = layout.size, n_radial, n_feat, n_out
        self.n_components = int(head.n_components)
        self.amplitude_shift = float(head.amplitude_shift)
        self.width_shift = float(head.width_shift)
        w_ref = theta_ref[self.w_index]  # (R, F)
        if not np.all(np.any(w_ref != 0, axis=0)):
            raise ValueError(f"theta_ref has zero radial weights for some NPE feature. Received: w={w_ref.T}")

        shells = _shell_sums(likelihood)  # (N_voxels, R)
        self.shell_mean = shells.mean(axis=0)
        self.shell_cov = np.cov(shells, rowvar=False).reshape(n_radial, n_radial)
        s_ref = np.sqrt(np.einsum("rf,rq,qf->f", w_ref, self.shell_cov, w_ref))
        self.w_hat = w_ref / s_ref  # (R, F), w_hat^T Sigma w_hat = 1
        # Sigma-orthonormal complement of each w_hat: Q^T Sigma Q = I, Q^T Sigma w_hat = 0.
        chol = np.linalg.cholesky(self.shell_cov)
        self.q = np.empty((n_feat, n_radial, n_radial - 1))
        for f in range(n_feat):
            y = chol.T @ self.w_hat[:, f]  # unit vector in the whitened space
            basis = np.linalg.svd(np.eye(n_radial) - np.outer(y, y))[0][:, : n_radial - 1]
            self.q[f] = np.linalg.solve(chol.T, basis)
        # |det [w_hat_f, Q_f]| = det(Sigma)^-1/2 (L^T [w_hat_f, Q_f] is orthogonal).
        self._log_det_const = -n_feat * float(np.sum(np.log(np.diag(chol))))
        if anchor is None:
            # The halos' mean environment at theta_ref, in slope units g = (psi - softplus(m)) / (sigmoid(m) s).
            offsets = np.cumsum([0] + [d.log_density.size for d in likelihood.data])
            rows = np.concatenate([d.halo_voxel + o for d, o in zip(likelihood.data, offsets)])
            m_ref = self.shell_mean @ w_ref + theta_ref[self.b_index]
            if len(rows):
                u = shells[rows] @ w_ref + theta_ref[self.b_index]  # (H, F)
                g = (_softplus_np(u) - _softplus_np(m_ref)) / (np.exp(_log_sigmoid_np(m_ref)) * s_ref)
                anchor = g.mean(axis=0)
            else:
                anchor = np.zeros(n_feat)
        self.anchor = np.asarray(anchor, np.float64)
        # v and theta share slots; both directions assemble their blocks in this order
        # (radial slots row-major, NPE bias, head kernel, head bias, anything else) and
        # put them back with one fixed permutation.
        blocks = np.concatenate([self.w_index.ravel(), self.b_index, self.c_index.ravel(), self.d_index])
        self._rest = np.setdiff1d(np.arange(self.size), blocks)
        self._unpermute = np.argsort(np.concatenate([blocks, self._rest]))
        super().__init__(forward_min_event_ndims=1, inverse_min_event_ndims=1, dtype=np.float64,
                         validate_args=validate_args, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        # No tensor-valued parameters: one map, batch shape [] (any leading batch of inputs).
        return dict()

    # -- NumPy helpers on theta ---------------------------------------------
    def half_space(self, theta) -> np.ndarray:
        """``(..., F)`` ``w_hat_f^T Sigma w_f``: positive where feature ``f``'s radial weights are in the domain.

        Args:
            theta: ``(..., P)`` parameters.
        """
        theta = np.asarray(theta, np.float64)
        if theta.ndim < 1 or theta.shape[-1] != self.size:
            raise ValueError(f"theta must have {self.size} entries in its last axis. Received: "
                             f"theta.shape={theta.shape}")
        w = theta[..., self.w_index]  # (..., R, F)
        return np.einsum("rf,rq,...qf->...f", self.w_hat, self.shell_cov, w)

    def mirror(self, theta, feature: int = 0) -> np.ndarray:
        """``(P,)`` theta with NPE feature ``feature`` reflected into the other half-space.

        ``u -> 2 m - u`` about its training mean ``m`` (``w -> -w``), with the head's
        slopes flipped and biases shifted so that ``z = c psi + d`` is unchanged where
        ``psi = softplus(u)`` is linear in ``u``.  Where it is not (the softplus
        bends over the voxels' range), the reflected point is a *different* fit of
        about the same quality: the other half-space, which the map here excludes,
        can hold its own mode.  :func:`tfhalo.bias.fit.fit_map` starts an
        optimiser from this point to find it.  ``mirror`` is an involution.
        """
        theta = np.asarray(theta, np.float64).reshape(-1)
        if theta.shape[0] != self.size:
            raise ValueError(f"theta must have {self.size} entries. Received: theta.shape={theta.shape}")
        feature = check_int("feature", feature, minimum=0, maximum=self.n_feat - 1)
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

    # -- the bijection -------------------------------------------------------
    def _assemble(self, blocks, x):
        """Blocks in the shared order, each ``(..., *)`` -> ``(..., P)`` in the slot layout of ``x (..., P)``."""
        flat = [_flatten_last(t, rank) for t, rank in zip(blocks, (2, 1, 2, 1))]
        if self._rest.size:
            flat.append(ops.take(x, self._rest, axis=-1))
        return ops.take(ops.concatenate(flat, axis=-1), self._unpermute, axis=-1)

    def _npe_coordinates(self, v):
        """``(xi, eta, m, lam, log_s)`` from v: ``(..., F)``, ``(..., R-1, F)``, three ``(..., F)``."""
        first = ops.take(v, self.w_index[0], axis=-1)
        eta = ops.take(v, self.w_index[1:], axis=-1)
        m = ops.take(v, self.b_index, axis=-1)
        if self.scale_coordinate == "log_scale":
            lam, xi = first, first - ops.softplus(m)
        else:
            xi, lam = first, first + ops.softplus(m)
        log_s = lam + 0.5 * ops.log1p(ops.sum(ops.square(eta), axis=-2))
        return xi, eta, m, lam, log_s

    def _undo_tail(self, tail):
        """``(..., J)`` tail-stage values -> head pre-activations at the anchor, and ln|Jacobian|."""
        k = self.n_components
        c0, c1, ell = tail[..., 0], tail[..., k], tail[..., 2 * k]
        sigma_sq = ops.exp(2.0 * ell)
        dist = c1 * sigma_sq
        log_alpha = c0 + dist + ell + 0.5 * c1 * dist
        pre_alpha, log_slope_alpha = _softplus_inverse_of_exp(log_alpha)
        pre_sigma, log_slope_sigma = _softplus_inverse_of_exp(ell)
        columns = [tail[..., j] for j in range(3 * k)]
        columns[0] = pre_alpha - self.amplitude_shift
        columns[k] = dist
        columns[2 * k] = pre_sigma - self.width_shift
        if k > 1:
            columns[k + 1] = tail[..., k + 1] - dist  # unit diagonal: no Jacobian term
        # d(pre_alpha, dist, pre_sigma) / d(c0, c1, ln sigma_1) is upper triangular.
        log_det = log_slope_alpha + 2.0 * ell + log_slope_sigma
        return ops.stack(columns, axis=-1), log_det

    def _tail(self, at_anchor):
        """``(..., J)`` head pre-activations at the anchor -> tail-stage values (inverse of :meth:`_undo_tail`)."""
        k = self.n_components
        log_alpha = _log_softplus(at_anchor[..., 0] + self.amplitude_shift)
        ell = _log_softplus(at_anchor[..., 2 * k] + self.width_shift)
        dist = at_anchor[..., k]
        scaled = dist * ops.exp(-ell)  # D / sigma_1
        columns = [at_anchor[..., j] for j in range(3 * k)]
        columns[0] = log_alpha - dist - ell - 0.5 * ops.square(scaled)
        columns[k] = scaled * ops.exp(-ell)
        columns[2 * k] = ell
        if k > 1:
            columns[k + 1] = at_anchor[..., k + 1] + dist  # ~ mu_2 - ln M_th where the increment is large
        return ops.stack(columns, axis=-1)

    def _forward(self, v):
        xi, eta, m, lam, log_s = self._npe_coordinates(v)
        dt = v.dtype
        direction = backend.constant(self.w_hat, dt) + ops.einsum("frk,...kf->...rf", backend.constant(self.q, dt), eta)
        w = ops.exp(lam)[..., None, :] * direction  # (..., R, F)
        b = m - ops.einsum("r,...rf->...f", backend.constant(self.shell_mean, dt), w)
        big_b = ops.take(v, self.c_index, axis=-1)  # (..., F, J)
        at_anchor, _ = self._undo_tail(ops.take(v, self.d_index, axis=-1))
        big_a = at_anchor - ops.einsum("...fj,f->...j", big_b, backend.constant(self.anchor, dt))
        c = big_b * ops.exp(-ops.log_sigmoid(m) - log_s)[..., None]
        d = big_a - ops.einsum("...fj,...f->...j", c, ops.softplus(m))
        return self._assemble([w, b, c, d], v)

    def _forward_log_det_jacobian(self, v):
        # Block-triangular in the order (NPE: xi, eta, m), (B), (tail) -> (w, b), (c), (d):
        # the product of the diagonal blocks' determinants.
        _, _, m, lam, log_s = self._npe_coordinates(v)
        per_feature = self.n_radial * lam - self.n_out * (ops.log_sigmoid(m) + log_s)
        _, log_det_tail = self._undo_tail(ops.take(v, self.d_index, axis=-1))
        return ops.sum(per_feature, axis=-1) + log_det_tail + self._log_det_const

    def _inverse(self, theta):
        dt = theta.dtype
        w = ops.take(theta, self.w_index, axis=-1)  # (..., R, F)
        b = ops.take(theta, self.b_index, axis=-1)
        sigma_w = ops.einsum("rq,...qf->...rf", backend.constant(self.shell_cov, dt), w)
        scale = ops.einsum("rf,...rf->...f", backend.constant(self.w_hat, dt), sigma_w)  # e^lambda
        scale = self._check_domain(theta, scale)
        lam = ops.log(scale)
        eta = ops.einsum("frk,...rf->...kf", backend.constant(self.q, dt), sigma_w) / scale[..., None, :]
        log_s = lam + 0.5 * ops.log1p(ops.sum(ops.square(eta), axis=-2))
        m = ops.einsum("r,...rf->...f", backend.constant(self.shell_mean, dt), w) + b
        xi = lam - ops.softplus(m)
        c = ops.take(theta, self.c_index, axis=-1)  # (..., F, J)
        d = ops.take(theta, self.d_index, axis=-1)  # (..., J)
        big_b = c * ops.exp(ops.log_sigmoid(m) + log_s)[..., None]
        big_a = d + ops.einsum("...fj,...f->...j", c, ops.softplus(m))
        tail = self._tail(big_a + ops.einsum("...fj,f->...j", big_b, backend.constant(self.anchor, dt)))
        first = lam if self.scale_coordinate == "log_scale" else xi
        radial = ops.concatenate([first[..., None, :], eta], axis=-2)  # slot r = 0 holds xi (or lambda)
        return self._assemble([radial, m, big_b, tail], theta)

    def _check_domain(self, theta, scale):
        """Refuse a concrete theta outside the half-space (or non-finite); assert in a TF graph if validating."""
        value = backend.static_value(scale)
        if value is not None:
            check_finite_array("theta", backend.static_value(theta))
            if not np.all(value > 0):
                raise ValueError(
                    "theta must lie in the reparametrisation's domain: every NPE feature's radial weights within "
                    "90 degrees of theta_ref's (w_hat^T Sigma w > 0). Received: theta with min w_hat^T Sigma w = "
                    f"{float(value.min())!r}")
            return scale
        if self.validate_args:
            return backend.assert_positive(scale, "theta outside the reparametrisation's domain (w_hat^T Sigma w <= 0)")
        return scale


def npe_head_slots(model, layout):
    """Flat indices of a neural bias model's parameters in ``theta``: ``(w (R, F), b (F,), c (F, J), d (J,))``.

    ``w[r, f]`` is the NPE's radial weight of shell ``r`` for feature ``f`` (one input
    channel, ``l = 0``), ``b`` the NPE's bias, ``c`` and ``d`` the head's kernel and bias;
    the layout is row-major per variable (:class:`~tfhalo.bias.likelihood.ParameterLayout`).

    Args:
        model: a :class:`~tfhalo.bias.model.NeuralBiasModel` whose NPE has one radial weight
            tensor ``(R, 1, F)`` and a bias.
        layout: its :class:`~tfhalo.bias.likelihood.ParameterLayout`.
    """
    npe, head = model.npe, model.head
    weights = [v for v in npe.trainable_variables if "radial" in v.path]
    n_radial, _, n_feat = (int(s) for s in weights[0].shape)
    n_out = int(head.kernel.shape[1])
    starts = dict(zip([id(v) for v in model.trainable_variables], layout.offsets[:-1]))
    w0, b0 = int(starts[id(weights[0])]), int(starts[id(npe.bias)])
    k0, d0 = int(starts[id(head.kernel)]), int(starts[id(head.bias)])
    # Flat indices (row-major variable layout): radial[r, 0, f], bias[f], kernel[f, j], bias[j].
    return (w0 + np.arange(n_radial)[:, None] * n_feat + np.arange(n_feat)[None, :],
            b0 + np.arange(n_feat), k0 + np.arange(n_feat * n_out).reshape(n_feat, n_out), d0 + np.arange(n_out))


def _flatten_last(t, rank: int):
    """``(..., A, B)`` -> ``(..., A * B)`` row-major (``rank = 2``); ``rank = 1`` returns ``t``.

    Built from slices rather than a reshape so that unknown leading dimensions
    (a TensorFlow graph) need no dynamic shape arithmetic.
    """
    if rank == 1:
        return t
    return ops.concatenate([t[..., a, :] for a in range(int(t.shape[-2]))], axis=-1)


def _shell_sums(likelihood) -> np.ndarray:
    """``(N_voxels, R)``: the NPE pre-activation with each radial weight set to 1 alone, bias 0."""
    npe = likelihood.model.npe
    # The NPE's own settings, linear and with one filter.  Built from attributes rather than
    # get_config(): Keras serialisation imports TensorFlow wherever it is installed, also under JAX.
    linear = type(npe)(filters=1, ells=npe.ells, kernel_size=npe.kernel_size, strides=npe.strides,
                       padding=npe.padding, equivariant=npe.equivariant, use_bias=npe.use_bias, activation=None,
                       dtype=npe.dtype_policy, name="shell_sums")
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
