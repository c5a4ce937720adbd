"""Bias parameters carried along by the white noise: a non-centred move of the field.

In a blocked sampler of the joint posterior (:class:`tfhalo.inference.GibbsKernel`)
the white noise usually moves with the bias parameters ``theta`` held fixed.  The
neural bias model of Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson
(2020), "Neural physical engines for inferring the halo mass distribution
function", MNRAS 494, 50, arXiv:1909.06379, reads the density only through its
NPE's pre-activation ``u_f(x) = sum_r w_rf S_r(x) + b_f`` (``S_r`` the sum of
``ln(1 + delta)`` over radial shell ``r`` of the kernel around voxel ``x``).  When the
field moves, the distribution of ``u`` over the voxels moves with it, and with
``theta`` fixed the expected halo count and the halos' environments follow: the
bias given the field is then far narrower than the bias over the posterior.

:class:`NPEMomentCarry` holds instead the bias in coordinates ``theta~`` that keep
the *mean and variance of each feature's pre-activation over the voxels* at the
values ``theta~`` gives on a reference field.  With ``mu(omega) (R,)`` and
``Sigma(omega) (R, R)`` the mean and covariance of the shell sums over the voxels of
the field of ``omega``, per feature ``f``:

    w_f = a_f w~_f,    a_f = sqrt(w~_f^T Sigma_ref w~_f / w~_f^T Sigma(omega) w~_f),
    b_f = b~_f + mu_ref^T w~_f - mu(omega)^T w_f,

and every other parameter is unchanged.  Then ``mean_x u_f = b~_f + mu_ref^T w~_f``
and ``var_x u_f = w~_f^T Sigma_ref w~_f`` whatever the field.  For a fixed field
the map is a bijection (``a_f`` depends only on the direction of ``w~_f``, so
``w~_f`` is ``w_f / a_f(w_f)``), and ``w~ -> a(w~) w~`` has Jacobian determinant
``a_f^R`` (a scaling of each ray by a factor constant along it), the shift of
``b`` a unit one: ``ln |det d theta / d theta~| = R sum_f ln a_f``.  A move of the
white noise with ``theta~`` held fixed (its target includes that term) leaves the
joint posterior invariant: the ancillarity-sufficiency interweaving of Yu & Meng
(2011), "To center or not to center: that is not the question", J. Comput.
Graph. Stat. 20, 531.

Example:
    >>> carry = NPEMomentCarry(posterior, omega_ref)      # omega_ref (n^3,)
    >>> kernel = GibbsKernel(posterior.log_prob, [posterior.n_field, posterior.n_bias], kernels,
    ...                      carries=[carry, None])         # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from keras import ops

from tfhalo import backend
from tfhalo.bias.likelihood import log_prior
from tfhalo.bias.reparam import npe_head_slots
from tfhalo.inference.gibbs import BlockCarry
from tfhalo.validation import check_finite_array

__all__ = ["NPEMomentCarry"]


class NPEMomentCarry(BlockCarry):
    """The white noise's move carries the bias so that the NPE's pre-activation keeps its voxel mean and spread.

    A :class:`tfhalo.inference.BlockCarry` for the white-noise block (block 0) of a
    :class:`~tfhalo.field.posterior.FieldLevelPosterior`'s state ``[omega, theta]``
    (module docstring for the map and its Jacobian).

    Args:
        posterior: a :class:`~tfhalo.field.posterior.FieldLevelPosterior` whose model is
            the stock neural bias model (an ``l = 0`` :class:`~tfhalo.layers.MultipoleConv3D`
            NPE with one input channel and a bias).
        reference_omega: ``(n^3,)`` finite white noise of the reference field (any fixed
            field; the chains' start).

    Attributes:
        reference_mean: ``(R,)`` mean shell sums over the reference field's voxels.
        reference_cov: ``(R, R)`` their covariance (``ddof = 1``).

    Raises:
        ValueError: another model, or a reference that is not ``n^3`` finite values.
    """

    def __init__(self, posterior, reference_omega):
        model = posterior.model
        npe = getattr(model, "npe", None)
        if posterior._n_npe is None or tuple(getattr(npe, "ells", ())) != (0,) or not npe.use_bias:
            raise ValueError("NPEMomentCarry needs the stock neural bias model (an l=0 NPE with a bias). Received: "
                             f"model of type {type(model).__name__}")
        omega = check_finite_array("reference_omega", np.asarray(reference_omega, np.float64))
        if omega.shape != (posterior.n_field,):
            raise ValueError(f"reference_omega must have shape ({posterior.n_field},). "
                             f"Received: reference_omega.shape={omega.shape}")
        self.posterior = posterior
        self.w_index, self.b_index, _, _ = npe_head_slots(model, posterior.layout)
        n = posterior.n_grid
        _, _, mean, cov = self.shell_moments(backend.constant(omega.reshape(1, n, n, n)))
        self.reference_mean = backend.to_numpy(mean)[0].astype(np.float64)
        self.reference_cov = backend.to_numpy(cov)[0].astype(np.float64)
        rest = np.setdiff1d(np.arange(posterior.n_bias), np.concatenate([self.w_index.ravel(), self.b_index]))
        self._rest = rest
        self._unpermute = np.argsort(np.concatenate([self.w_index.ravel(), self.b_index, rest]))

    def __repr__(self):
        return f"NPEMomentCarry(n_grid={self.posterior.n_grid}, radial={self.w_index.shape[0]})"

    # -- the field's moments ----------------------------------------------------------------------------------
    def shell_moments(self, omega):
        """``(log_density (C, n, n, n), responses, mean (C, R), cov (C, R, R))`` of ``omega (C, n, n, n)``.

        ``responses`` are the NPE's basis responses, for the likelihood; ``mean`` and
        ``cov`` the mean and covariance (``ddof = 1``) of the shell sums over the voxels.
        """
        log_density = self.posterior.log_density(omega)
        responses, mean, cov = self._moments(log_density)
        return log_density, responses, mean, cov

    def _moments(self, log_density):
        npe = self.posterior.model.npe
        x = ops.expand_dims(ops.cast(log_density, self.posterior.layout.dtype), -1)
        responses = npe.basis_responses(x)
        shells = responses[0][..., 0, :, 0]  # (C, n, n, n, R): l = 0, one input channel
        n_radial = int(shells.shape[-1])
        shells = ops.reshape(shells, (int(shells.shape[0]), -1, n_radial))
        mean = ops.sum(shells, axis=1) / int(shells.shape[1])  # (Keras's JAX mean is not float64-exact)
        centred = shells - mean[:, None, :]
        cov = ops.einsum("cvr,cvs->crs", centred, centred) / (int(shells.shape[1]) - 1)
        return responses, mean, cov

    # -- the map -------------------------------------------------------------------------------------------
    def _scale(self, w, mean, cov):
        """``(C, F)`` ``a_f = sqrt(w_f^T Sigma_ref w_f / w_f^T Sigma w_f)`` (homogeneous of degree 0 in ``w_f``)."""
        dt = w.dtype
        ref = ops.einsum("crf,rs,csf->cf", w, backend.constant(self.reference_cov, dt), w)
        now = ops.einsum("crf,crs,csf->cf", w, ops.cast(cov, dt), w)
        return ops.sqrt(ref / now)

    def _assemble(self, theta, w, b):
        c = int(theta.shape[0])
        flat = [ops.reshape(w, (c, -1)), b]
        if self._rest.size:
            flat.append(ops.take(theta, self._rest, axis=-1))
        return ops.take(ops.concatenate(flat, axis=-1), self._unpermute, axis=-1)

    def from_reference(self, theta_ref, mean, cov):
        """``(theta (C, P), log_det (C,))``: the bias on the field of moments ``mean``, ``cov`` from ``theta~``."""
        dt = theta_ref.dtype
        w_ref = ops.take(theta_ref, self.w_index, axis=-1)  # (C, R, F)
        b_ref = ops.take(theta_ref, self.b_index, axis=-1)
        a = self._scale(w_ref, mean, cov)
        w = a[:, None, :] * w_ref
        b = (b_ref + ops.einsum("r,crf->cf", backend.constant(self.reference_mean, dt), w_ref)
             - ops.einsum("cr,crf->cf", ops.cast(mean, dt), w))
        log_det = int(self.w_index.shape[0]) * ops.sum(ops.log(a), axis=-1)
        return self._assemble(theta_ref, w, b), log_det

    def to_reference(self, theta, mean, cov):
        """``(C, P)`` ``theta~`` of the bias ``theta`` on the field of moments ``mean``, ``cov``."""
        dt = theta.dtype
        w = ops.take(theta, self.w_index, axis=-1)
        b = ops.take(theta, self.b_index, axis=-1)
        w_ref = w / self._scale(w, mean, cov)[:, None, :]
        b_ref = (b - ops.einsum("r,crf->cf", backend.constant(self.reference_mean, dt), w_ref)
                 + ops.einsum("cr,crf->cf", ops.cast(mean, dt), w))
        return self._assemble(theta, w_ref, b_ref)

    # -- BlockCarry --------------------------------------------------------------------------------------------
    def _omega(self, x):
        n = self.posterior.n_grid
        return ops.reshape(x, (-1, n, n, n))

    def ancillary(self, blocks):
        _, _, mean, cov = self.shell_moments(self._omega(blocks[0]))
        return self.to_reference(blocks[1], mean, cov)

    def carry(self, x_i, a):
        _, _, mean, cov = self.shell_moments(self._omega(x_i))
        theta, log_det = self.from_reference(a, mean, cov)
        return [x_i, ops.cast(theta, x_i.dtype)], ops.cast(log_det, x_i.dtype)

    def log_prob(self, target_log_prob_fn, x_i, a):
        """The joint at the carried bias plus the log-Jacobian, with one forward model and one NPE convolution."""
        post = self.posterior
        log_density, responses, mean, cov = self.shell_moments(self._omega(x_i))
        theta, log_det = self.from_reference(a, mean, cov)
        halo, expected = post._chain_terms(log_density, theta, responses)
        bias = log_prior(theta, post.prior_scale) + halo - expected + log_det
        return post.white_noise_log_prior(x_i) + ops.cast(bias, x_i.dtype)
