"""Sampling coordinates as TFP bijectors.

:func:`affine_preconditioner` is the dense Laplace preconditioner: with ``H``
the Hessian of ``-ln p`` at the mode ``theta_0`` and ``L = chol(H^-1)``,
``theta = theta_0 + L z`` makes the Laplace approximation of the target a unit
Gaussian in ``z``.  HMC with a unit mass matrix on ``z`` is HMC with mass
matrix ``H`` on ``theta`` (Neal 2011, section 4.1); the map is fixed and
linear, so its Jacobian is constant and the chains stay exactly invariant for
the target.  The diagonal mass matrix that :func:`tfhalo.inference.sample`
adapts then only has to correct the Laplace widths.  It is the one ``O(P^2)``
object of the package (memory ``P^2``, set-up ``P^3``): for a target of tens
of thousands of parameters rely on the adapted diagonal mass matrix, or
precondition a small block only (``tfb.Blockwise``).

References:
    Neal (2011), "MCMC using Hamiltonian dynamics", in Handbook of Markov Chain
    Monte Carlo, arXiv:1206.1901.
    Betancourt (2017), "A Conceptual Introduction to Hamiltonian Monte Carlo",
    arXiv:1701.02434.

Example:
    >>> import numpy as np
    >>> bij = affine_preconditioner(np.zeros(2), hessian=np.diag([4.0, 0.25]))
    >>> np.asarray(bij.forward(np.array([[1.0, 1.0]])))
    array([[0.5, 2. ]])
"""

from __future__ import annotations

import numpy as np

from tfhalo import backend
from tfhalo.validation import check_float

# TFP's substrate of the Keras backend (TensorFlow or JAX): see tfhalo.backend.
tfb = backend.tfp.bijectors


def affine_preconditioner(centre, hessian, floor: float = 1e-2, name: str = "affine_preconditioner"):
    """``theta = centre + chol(H^-1) z`` as a ``tfb.Chain([tfb.Shift, tfb.ScaleMatvecTriL])``.

    Args:
        centre: ``(P,)`` the mode (MAP).
        hessian: ``(P, P)`` symmetric Hessian of ``-ln p`` at ``centre``, in the
            coordinates the bijector maps to (for a chain of bijectors: the Hessian of the
            Jacobian-corrected target in the inner bijector's input coordinates).
        floor: smallest curvature kept: eigenvalues of ``H`` below it (flat, or
            negative away from an exact mode) are raised to it, so ``H`` is positive
            definite; the prior precision is the natural value (a posterior is never
            wider than its prior).
        name: the bijector's name.

    Returns:
        A float64 ``tfp.bijectors.Bijector`` of the backend's TFP substrate (:mod:`tfhalo.backend`)
        acting on ``(..., P)``, ``forward_min_event_ndims=1``.

    Raises:
        ValueError: ``centre`` not a finite vector, ``hessian`` not a finite symmetric
            ``(P, P)`` matrix, ``floor`` not a positive finite number.

    Example:
        >>> bij = affine_preconditioner(theta_map, hessian=h, floor=1 / 10.0**2)   # doctest: +SKIP
        >>> chains = sample(log_post, starts, config, bijector=bij)               # doctest: +SKIP
    """
    floor = check_float("floor", floor, positive=True)
    centre = np.asarray(centre, dtype=np.float64)
    if centre.ndim != 1 or centre.size < 1:
        raise ValueError(f"centre must be a (P,) vector. Received: centre.shape={centre.shape}")
    if not np.all(np.isfinite(centre)):
        bad = np.flatnonzero(~np.isfinite(centre)).tolist()
        raise ValueError(f"centre must be finite. Received: non-finite values at indices {bad}")
    p = centre.size
    h = np.asarray(hessian, dtype=np.float64)
    if h.shape != (p, p):
        raise ValueError(f"hessian must have shape ({p}, {p}) to match centre. Received: hessian.shape={h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("hessian must be finite. Received: a hessian with non-finite entries")
    scale = np.max(np.abs(h))
    asym = np.max(np.abs(h - h.T))
    if asym > 1e-6 * scale:
        raise ValueError(f"hessian must be symmetric. Received: max |H - H^T| = {asym:.3g} for max |H| = {scale:.3g}")
    vals, vecs = np.linalg.eigh(0.5 * (h + h.T))
    return _shift_and_cholesky(centre, (vecs / np.maximum(vals, floor)) @ vecs.T, name)


def _shift_and_cholesky(centre: np.ndarray, cov: np.ndarray, name: str):
    """``theta = centre + chol(cov) z``: the affine map both preconditioners build (``cov`` symmetrised)."""
    chol = np.linalg.cholesky(0.5 * (cov + cov.T))
    return tfb.Chain([tfb.Shift(backend.constant(centre)), tfb.ScaleMatvecTriL(backend.constant(chol))], name=name)


def preconditioner_from_draws(draws, shrinkage: float = 1e-3, name: str = "draws_preconditioner"):
    """``theta = mean + chol(Sigma) z`` with ``Sigma`` the regularised covariance of pilot draws.

    Stan's dense-metric estimate: ``Sigma = n / (n + 5) * cov + shrinkage * 5 / (n + 5) * I``
    (Carpenter et al. 2017, "Stan: A probabilistic programming language", J. Stat. Softw.
    76, 1), so a short pilot cannot make it singular.  Where the posterior is far from
    Gaussian the Laplace Hessian at the mode is a poor global metric (it may even have
    negative eigenvalues); the covariance of draws describes the bulk the chains visit.

    Args:
        draws: ``(N, P)`` finite draws (``N >= 2``), e.g. a pilot run's samples mapped to
            the coordinates this bijector maps to.
        shrinkage: variance added towards the identity, weighted by ``5 / (n + 5)``.
        name: the bijector's name.

    Returns:
        A float64 ``tfp.bijectors.Bijector`` on ``(..., P)``, as :func:`affine_preconditioner`.

    Raises:
        ValueError: ``draws`` not a finite ``(N, P)`` array with ``N >= 2``, or ``shrinkage`` not positive.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(500, 2)) * [1.0, 3.0]
        >>> bij = preconditioner_from_draws(x)
        >>> tuple(bij.forward(np.zeros((1, 2))).shape)
        (1, 2)
    """
    shrinkage = check_float("shrinkage", shrinkage, positive=True)
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"draws must be an (N, P) array with N >= 2. Received: draws.shape={x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("draws must be finite. Received: draws with non-finite entries")
    n, p = x.shape
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov = (n / (n + 5.0)) * cov + shrinkage * (5.0 / (n + 5.0)) * np.eye(p)
    return _shift_and_cholesky(x.mean(axis=0), cov, name)
