"""Fourier-space preconditioning of a white-noise field for TFP's HMC / NUTS.

A field-level posterior over white noise ``omega`` (``n^3`` unit normals a
priori) is, near its bulk, close to Gaussian with a precision that is
translation invariant, hence diagonal in a Fourier basis: the prior adds
``1`` per mode and the data add ``h_L(k)``, large at the low ``k`` they
constrain and small at high ``k``; Simon-Onfroy, Lanusse & de Mattia (2025)
find that this preconditioning decides the cost of field-level sampling.  In real space every voxel of such a
posterior has the same variance, so the sampler's diagonal mass matrix
cannot see the spread of scales; in Hartley coordinates it can.

:class:`FourierPreconditioner` samples ``u`` with::

    omega = H(field_scale * u_field),      theta = bias_loc + bias_scale * u_bias

where ``H`` is the orthonormal Hartley transform (:func:`tfhalo.field.fft.hartley3`,
real, symmetric and its own inverse, so ``u_field`` holds one real coordinate
per Fourier mode: ``H`` diagonalises every convolution by an even kernel, such
as ``delta_L = F^-1[A(|k|) F omega]``).  With ``field_scale = 1 / sqrt(1 + h_L(k))``
the Gaussian part of the posterior has unit width in ``u``; the map is linear
and fixed, so its log-Jacobian ``sum(log field_scale) + sum(log bias_scale)``
is constant and the chains stay exactly invariant for the target.  The
sampler's diagonal mass-matrix adaptation then corrects each Fourier mode's
width individually.

:func:`curvature_scales` estimates ``field_scale`` from the target itself: the
diagonal of the negative Hessian in Hartley coordinates by Hutchinson's
estimator ``diag(M) = E[z * (M z)]`` with Rademacher probes ``z`` (exact for a
diagonal ``M``, since ``z_i^2 = 1``), Hessian-vector products by central finite
differences of gradients, averaged over the modes of each ``|k|`` shell
(:func:`shell_average`), floored at the prior's curvature and turned into
widths by :func:`isotropic_scales`.

The transforms run in ``keras.ops`` and the bijector belongs to TFP's
substrate of the Keras backend (:mod:`tfhalo.backend`: TensorFlow or JAX), the
one :func:`tfhalo.inference.sample` runs on; under JAX no TensorFlow module is
loaded.

References:
    Hutchinson (1990), "A stochastic estimator of the trace of the influence
    matrix for Laplacian smoothing splines", Commun. Stat. Simul. Comput. 19, 433
    (Rademacher probes); Bekas, Kokiopoulou & Saad (2007), "An estimator for the
    diagonal of a matrix", Appl. Numer. Math. 57, 1214.
    Simon-Onfroy, Lanusse & de Mattia (2025), "Benchmarking field-level cosmological
    inference from galaxy redshift surveys", arXiv:2504.20130 (model evaluations per
    effective sample; Fourier-space preconditioning of the latent field).
    Jasche & Wandelt (2013), "Bayesian physical reconstruction of initial
    conditions from large-scale structure surveys", MNRAS 432, 894, arXiv:1203.3639
    (BORG: HMC over the initial white noise).
    Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural
    physical engines for inferring the halo mass distribution function", MNRAS
    494, 50, arXiv:1909.06379 (the field-level posterior this preconditions).
    Neal (2011), "MCMC using Hamiltonian dynamics", in Handbook of Markov Chain
    Monte Carlo, arXiv:1206.1901 (a linear change of coordinates is a mass matrix).
    Bracewell (1983), "Discrete Hartley transform", J. Opt. Soc. Am. 73, 1832.

Example:
    >>> scale = isotropic_scales(8, lambda k: 1.0 + 10.0 * (k < 0.3), box_size=32.0)
    >>> bij = FourierPreconditioner(8, n_bias=2, field_scale=scale)
    >>> tuple(bij.forward(np.zeros((4, 8**3 + 2))).shape)
    (4, 514)
    >>> chains = sample(log_prob, start, config, bijector=bij)            # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from keras import ops

from tfhalo import backend
from tfhalo.field.analysis import hartley_coefficients
from tfhalo.field.fft import hartley3
from tfhalo.sim.grid import fft_wavenumber_magnitude
from tfhalo.validation import check_finite_array, check_float, check_int, check_seed

# TFP's substrate of the Keras backend (TensorFlow or JAX): see tfhalo.backend.
tfb = backend.tfp.bijectors

__all__ = [
    "FourierPreconditioner",
    "mode_wavenumbers",
    "k_shells",
    "shell_average",
    "isotropic_scales",
    "hutchinson_curvature",
    "curvature_scales",
    "scales_from_draws",
    "PRIOR_CURVATURE",
]

#: Curvature of the white-noise prior ``omega ~ N(0, I)`` per Hartley mode (``H`` is orthogonal).
PRIOR_CURVATURE = 1.0


def _check_grid(n_grid):
    return check_int("n_grid", n_grid, minimum=2)


def _vector(name, value, size, default, positive=False):
    """``(size,)`` float64 vector (``default`` if None), finite and optionally positive."""
    if value is None:
        return np.full(size, default, np.float64)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers. Received: {name}={value!r}") from None
    if arr.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},). Received: {name}.shape={arr.shape}")
    check_finite_array(name, arr)
    if positive and not np.all(arr > 0):
        i = int(np.flatnonzero(~(arr > 0))[0])
        raise ValueError(f"{name} must be positive. Received: {name}[{i}]={float(arr[i])!r}")
    return arr


def _field_scale(value, n):
    if value is None:
        return np.ones((n, n, n), np.float64)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("field_scale must be an (n, n, n) array of numbers. "
                         f"Received: field_scale={value!r}") from None
    if arr.shape != (n, n, n):
        raise ValueError(f"field_scale must have shape ({n}, {n}, {n}) to match n_grid={n}. "
                         f"Received: field_scale.shape={arr.shape}")
    check_finite_array("field_scale", arr)
    if not np.all(arr > 0):
        i = np.unravel_index(int(np.flatnonzero(~(arr > 0))[0]), arr.shape)
        raise ValueError(f"field_scale must be positive. Received: field_scale[{', '.join(map(str, i))}]"
                         f"={float(arr[i])!r}")
    return arr


class FourierPreconditioner(tfb.Bijector):
    """Sampling coordinates ``u`` of a (white-noise field, parameters) state, per Fourier mode.

    On flat states ``(..., n^3 + n_bias)`` (field first, C order, then the parameters)::

        forward(u)   = [ H(field_scale * u_field).ravel(),  bias_loc + bias_scale * u_bias ]
        inverse(x)   = [ H(x_field) / field_scale,          (x_bias - bias_loc) / bias_scale ]
        log|det J|   = sum(log field_scale) + sum(log bias_scale)       (constant)

    with ``H`` :func:`tfhalo.field.fft.hartley3` (orthonormal, ``H^-1 = H``, ``|det H| = 1``).
    ``u_field[i, j, k]`` is the Hartley coefficient of Fourier index ``(i, j, k)`` (same
    ``|k|`` as that FFT index) in units of ``field_scale[i, j, k]``.

    Args:
        n_grid: field cells per side ``n`` (at least 2).
        n_bias: parameters after the field (at least 0).
        field_scale: ``(n, n, n)`` positive finite width per Hartley mode (default ones: the
            prior's width), e.g. from :func:`curvature_scales` or :func:`isotropic_scales`.
        bias_loc: ``(n_bias,)`` finite centre of the parameters (default zeros), e.g. their fit.
        bias_scale: ``(n_bias,)`` positive finite widths of the parameters (default ones).
        name: the bijector's name.

    Raises:
        ValueError: an argument of the wrong type, shape, sign or not finite, naming it.

    Example:
        >>> bij = FourierPreconditioner(4, n_bias=2, bias_loc=[1.0, 2.0], bias_scale=[0.5, 0.5])
        >>> x = bij.forward(np.zeros((3, 66)))               # (C, n^3 + n_bias)
        >>> np.asarray(x)[0, -2:]
        array([1., 2.])
        >>> float(bij.forward_log_det_jacobian(np.zeros((3, 66)), event_ndims=1))   # 2 log 0.5
        -1.3862943611198906
    """

    def __init__(self, n_grid, n_bias=0, field_scale=None, bias_loc=None, bias_scale=None,
                 name: str = "fourier_preconditioner"):
        parameters = dict(locals())
        n = _check_grid(n_grid)
        n_bias = check_int("n_bias", n_bias, minimum=0)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string. Received: name={name!r}")
        scale = _field_scale(field_scale, n)
        loc = _vector("bias_loc", bias_loc, n_bias, 0.0)
        bscale = _vector("bias_scale", bias_scale, n_bias, 1.0, positive=True)
        self._n, self._n_bias, self._n_field = n, n_bias, n**3
        self._field_scale_np, self._bias_loc_np, self._bias_scale_np = scale, loc, bscale
        self._log_det = float(np.sum(np.log(scale)) + np.sum(np.log(bscale)))
        self._scale_t = backend.constant(scale)
        self._loc_t = backend.constant(loc)
        self._bscale_t = backend.constant(bscale)
        super().__init__(forward_min_event_ndims=1, is_constant_jacobian=True, validate_args=False,
                         dtype=self._scale_t.dtype, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype=None, num_classes=None):
        # Arrays fixed at construction with no batch dimensions: the bijector has batch shape [].
        return dict()

    @property
    def n_grid(self) -> int:
        """Field cells per side ``n``."""
        return self._n

    @property
    def n_field(self) -> int:
        """Field coordinates ``n^3``."""
        return self._n_field

    @property
    def n_bias(self) -> int:
        """Parameters after the field."""
        return self._n_bias

    @property
    def size(self) -> int:
        """State length ``n^3 + n_bias``."""
        return self._n_field + self._n_bias

    @property
    def field_scale(self) -> np.ndarray:
        """``(n, n, n)`` width per Hartley mode (a copy)."""
        return self._field_scale_np.copy()

    @property
    def bias_loc(self) -> np.ndarray:
        """``(n_bias,)`` centre of the parameters (a copy)."""
        return self._bias_loc_np.copy()

    @property
    def bias_scale(self) -> np.ndarray:
        """``(n_bias,)`` widths of the parameters (a copy)."""
        return self._bias_scale_np.copy()

    def _split(self, x):
        x = ops.convert_to_tensor(x, "float64")
        if len(x.shape) < 1 or (x.shape[-1] is not None and x.shape[-1] != self.size):
            raise ValueError(f"states must have last axis n_grid^3 + n_bias = {self.size}. "
                             f"Received: shape {tuple(x.shape)}")
        n = self._n
        # Static sizes where known; a TensorFlow graph's unknown batch sizes come back as scalar tensors.
        batch = tuple(ops.shape(x)[:-1])
        field = ops.reshape(x[..., :self._n_field], batch + (n, n, n))
        return field, x[..., self._n_field:], batch

    def _join(self, field, bias, batch):
        flat = ops.reshape(field, batch + (self._n_field,))
        return ops.concatenate([flat, bias], axis=-1) if self._n_bias else flat

    def _forward(self, u):
        field, bias, batch = self._split(u)
        return self._join(hartley3(field * self._scale_t), self._loc_t + self._bscale_t * bias, batch)

    def _inverse(self, x):
        field, bias, batch = self._split(x)
        return self._join(hartley3(field) / self._scale_t, (bias - self._loc_t) / self._bscale_t, batch)

    def _forward_log_det_jacobian(self, u):
        # Constant: a scalar broadcasts against the (C,) log-density in the sampler.
        return backend.constant(self._log_det)

    def _inverse_log_det_jacobian(self, x):
        return backend.constant(-self._log_det)


def mode_wavenumbers(n_grid, box_size) -> np.ndarray:
    """``|k|`` (h/Mpc) of every index of the full ``(n, n, n)`` FFT grid (= Hartley grid).

    Args:
        n_grid: cells per side ``n``.
        box_size: box side, Mpc/h.

    Returns:
        ``(n, n, n)`` float64; ``[0, 0, 0]`` is 0.

    Example:
        >>> mode_wavenumbers(4, 2 * np.pi)[0, 0, :]
        array([0., 1., 2., 1.])
    """
    n = _check_grid(n_grid)
    box_size = check_float("box_size", box_size, positive=True)
    return fft_wavenumber_magnitude(n, box_size)


def k_shells(n_grid):
    """Exact ``|k|`` shells of the full ``(n, n, n)`` FFT / Hartley grid.

    A shell holds the modes with one value of ``m^2 = i^2 + j^2 + k^2`` (signed integer
    frequencies, NumPy's ``fftfreq(n) * n``): the modes a statistically isotropic
    quantity cannot tell apart.

    Args:
        n_grid: cells per side ``n``.

    Returns:
        ``(labels, m2, counts)``: ``labels`` ``(n, n, n)`` int64 shell of each mode,
        ``m2`` ``(S,)`` int64 increasing ``|k|^2`` in units of the fundamental mode
        (``|k| = 2 pi sqrt(m2) / box_size``), ``counts`` ``(S,)`` modes per shell.

    Example:
        >>> labels, m2, counts = k_shells(4)
        >>> m2[:4].tolist(), counts[:4].tolist()
        ([0, 1, 2, 3], [1, 6, 12, 8])
    """
    n = _check_grid(n_grid)
    f = np.rint(np.fft.fftfreq(n, d=1.0 / n)).astype(np.int64)
    sq = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
    m2, labels, counts = np.unique(sq, return_inverse=True, return_counts=True)
    return labels.reshape(n, n, n).astype(np.int64), m2, counts


def shell_average(values) -> np.ndarray:
    """Each mode's value replaced by the mean over its exact ``|k|`` shell (:func:`k_shells`).

    Args:
        values: ``(n, n, n)`` finite per-mode values (FFT / Hartley index order).

    Returns:
        ``(n, n, n)`` float64, constant on each shell.

    Example:
        >>> v = np.zeros((4, 4, 4)); v[1, 0, 0] = 6.0
        >>> float(shell_average(v)[0, 0, 1])          # the 6 modes of |k| = 1 share it
        1.0
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"values must be an (n, n, n) array of numbers. Received: values={values!r}") from None
    if arr.ndim != 3 or len(set(arr.shape)) != 1 or arr.shape[0] < 2:
        raise ValueError(f"values must be a cubic (n, n, n) array with n >= 2. Received: values.shape={arr.shape}")
    check_finite_array("values", arr)
    labels, _, counts = k_shells(arr.shape[0])
    sums = np.bincount(labels.ravel(), weights=arr.ravel(), minlength=counts.size)
    return (sums / counts)[labels]


def isotropic_scales(n_grid, curvature, box_size=None, floor: float = PRIOR_CURVATURE) -> np.ndarray:
    """Widths ``1 / sqrt(max(<h>_shell, floor))`` per Hartley mode from a curvature ``h``.

    Args:
        n_grid: cells per side ``n``.
        curvature: the diagonal of the negative Hessian of the log-posterior in Hartley
            coordinates: an ``(n, n, n)`` array of per-mode values, or a callable mapping
            ``|k|`` (h/Mpc, an ``(n, n, n)`` array from :func:`mode_wavenumbers`) to them
            (then ``box_size`` is required), e.g. ``lambda k: 1 + A(k)**2 / sigma**2``.
        box_size: box side, Mpc/h (only for a callable ``curvature``).
        floor: smallest curvature kept, positive.  Default :data:`PRIOR_CURVATURE` (1): the
            white-noise prior alone gives ``h = 1`` per mode and a log-concave likelihood only
            adds to it, so a shell average below 1 is estimation noise or a non-convex
            likelihood; flooring at 1 caps every width at the prior's.

    Returns:
        ``(n, n, n)`` float64 ``field_scale`` for :class:`FourierPreconditioner`, constant on
        each exact ``|k|`` shell.

    Raises:
        ValueError: bad ``n_grid``, ``box_size``, ``floor``, or curvature values of the wrong
            shape or not finite (NaN is refused, not floored).

    Example:
        >>> s = isotropic_scales(4, np.full((4, 4, 4), 4.0))
        >>> float(s[1, 2, 3])
        0.5
    """
    n = _check_grid(n_grid)
    floor = check_float("floor", floor, positive=True)
    if callable(curvature):
        if box_size is None:
            raise ValueError("box_size is required when curvature is a function of |k|. Received: box_size=None")
        values = curvature(mode_wavenumbers(n, box_size))
    else:
        values = curvature
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"curvature must give an (n, n, n) array of numbers. Received: {values!r}") from None
    if arr.shape != (n, n, n):
        raise ValueError(f"curvature must have shape ({n}, {n}, {n}) to match n_grid={n}. "
                         f"Received: curvature shape {arr.shape}")
    check_finite_array("curvature", arr)
    return 1.0 / np.sqrt(np.maximum(shell_average(arr), floor))


def _check_state(state, n):
    try:
        arr = np.asarray(state, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"state must be a (P,) or (C, P) array of numbers. Received: state={state!r}") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < n**3:
        raise ValueError(f"state must be (P,) or (C, P) with P >= n_grid^3 = {n**3} (the field first). "
                         f"Received: state.shape={np.shape(state)}")
    check_finite_array("state", arr)
    return arr


def hutchinson_curvature(log_prob_fn, state, n_grid, n_probes: int = 4, eps: float = 1e-3,
                         seed: int = 0) -> np.ndarray:
    """Per-mode estimate of ``diag(-Hess ln p)`` in Hartley coordinates of the field.

    With ``v = H omega`` the field's Hartley coefficients (``omega = H v``) and Rademacher
    probes ``z`` in ``v``, ``-Hess_v ln p  z ~ -(g(omega + eps H z) - g(omega - eps H z))
    / (2 eps)`` mapped by ``H``, with ``g`` the gradient of ``ln p`` in ``omega``
    (:func:`tfhalo.backend.value_and_gradient`, compiled); ``z * (that)`` averaged over
    the probes and the ``C`` states is Hutchinson's estimate of the diagonal: unbiased,
    and exact for a diagonal Hessian (up to the finite-difference error, nil for a
    quadratic ``ln p`` but rounding).  The parameters after the field are held fixed.

    Args:
        log_prob_fn: ``(C, P) float64 -> (C,)`` log-density of the Keras backend's tensors,
            traceable (as for :func:`tfhalo.inference.sample`); the field is ``state[:, :n^3]``
            in C order.
        state: ``(P,)`` or ``(C, P)`` finite point(s) where the curvature is measured, e.g. a
            MAP, a draw from the prior, or the chains' current states.
        n_grid: field cells per side ``n``.
        n_probes: Rademacher probes per state (each costs two gradients of the batch).
        eps: finite-difference step in Hartley coordinates (prior width 1), positive.
        seed: non-negative integer seed of the probes.

    Returns:
        ``(n, n, n)`` float64 per-mode estimates (Hartley index order); not floored.

    Raises:
        ValueError: a bad argument (named), or a log-density or gradient that is not finite
            at the probed points.

    Example:
        >>> h = hutchinson_curvature(log_prob, np.zeros((1, 8**3)), 8, n_probes=2)   # doctest: +SKIP
    """
    if not callable(log_prob_fn):
        raise ValueError(f"log_prob_fn must be callable. Received: log_prob_fn={log_prob_fn!r}")
    n = _check_grid(n_grid)
    n_probes = check_int("n_probes", n_probes, minimum=1)
    eps = check_float("eps", eps, positive=True)
    seed = check_seed("seed", seed, allow_none=False)
    x0 = _check_state(state, n)
    c, p = x0.shape
    n3 = n**3
    rng = np.random.default_rng(seed)
    # Compiled once per call: under JAX an eager gradient of the forward model runs op by op.
    value_and_grad = backend.jit(lambda x: backend.value_and_gradient(log_prob_fn, x), jit_compile=False)

    def grad_field(x):
        lp, g = value_and_grad(backend.constant(x))
        lp = backend.to_numpy(lp)
        if g is None or not np.all(np.isfinite(lp)):
            raise ValueError("log_prob_fn must be finite and differentiable at state +- eps probes. Received: "
                             f"log_prob_fn values {lp.tolist()[:4]}{'...' if lp.size > 4 else ''}, "
                             f"gradient {'missing' if g is None else 'present'} (try a smaller eps)")
        g = backend.to_numpy(g)[:, :n3]
        if not np.all(np.isfinite(g)):
            raise ValueError("the gradient of log_prob_fn must be finite at state +- eps probes. Received: "
                             f"non-finite gradient in states {np.flatnonzero(~np.all(np.isfinite(g), 1)).tolist()}")
        return g

    def hartley(a):
        return backend.to_numpy(hartley3(backend.constant(a)))

    total = np.zeros((n, n, n))
    for _ in range(n_probes):
        z = rng.choice(np.array([-1.0, 1.0]), size=(c, n, n, n))
        step = eps * hartley(z).reshape(c, n3)
        plus, minus = x0.copy(), x0.copy()
        plus[:, :n3] += step
        minus[:, :n3] -= step
        # -Hess_omega z' in omega, then H to Hartley coordinates (H symmetric: H^T = H).
        hz = -(grad_field(plus) - grad_field(minus)) / (2.0 * eps)
        total += np.sum(z * hartley(hz.reshape(c, n, n, n)), axis=0)
    return total / (n_probes * c)


def curvature_scales(log_prob_fn, state, n_grid, n_probes: int = 4, eps: float = 1e-3, seed: int = 0,
                     floor: float = PRIOR_CURVATURE) -> np.ndarray:
    """``field_scale`` for :class:`FourierPreconditioner` from the target's curvature at ``state``.

    :func:`hutchinson_curvature` averaged over each exact ``|k|`` shell, floored and
    inverted by :func:`isotropic_scales`: ``1 / sqrt(max(<h>_shell, floor))``.  For a
    Gaussian target whose precision is diagonal in Fourier space and constant on each
    shell it returns the exact posterior widths (the Wiener filter's, for a linear
    model with Gaussian noise).

    Args:
        log_prob_fn, state, n_grid, n_probes, eps, seed: as :func:`hutchinson_curvature`.
        floor: smallest curvature kept (default 1, the white-noise prior's; see
            :func:`isotropic_scales`).

    Returns:
        ``(n, n, n)`` float64 positive widths, constant on each ``|k|`` shell.

    Raises:
        ValueError: as :func:`hutchinson_curvature`, or a bad ``floor``.

    Example:
        >>> scale = curvature_scales(posterior.log_prob, start, 32, n_probes=4, seed=0)  # doctest: +SKIP
        >>> bij = FourierPreconditioner(32, n_bias=17, field_scale=scale, bias_loc=theta_fit)  # doctest: +SKIP
    """
    floor = check_float("floor", floor, positive=True)
    h = hutchinson_curvature(log_prob_fn, state, n_grid, n_probes=n_probes, eps=eps, seed=seed)
    return isotropic_scales(n_grid, h, floor=floor)


def scales_from_draws(field_scale, omega_draws):
    """``field_scale`` re-estimated from white-noise draws: each shell's spread in the current coordinates.

    A posterior's curvature at one point (:func:`curvature_scales` at the chains' start)
    need not be its width over the typical set: at the start the data may constrain a
    shell's modes more, or less, than they do where the chains go.  Here each draw is
    mapped to the coordinates ``u = H(omega) / field_scale`` of
    :class:`FourierPreconditioner`, the variance of ``u`` over the draws (all chains
    pooled, about their common mean) is averaged over each exact ``|k|`` shell
    (:func:`shell_average`) and regularised towards 1 (the current scale) as Stan
    regularises its metric: ``v = n / (n + 5) * var + 5 / (n + 5)`` for ``n`` draws
    (Carpenter et al. 2017, J. Stat. Softw. 76, 1).  The new widths are
    ``field_scale * sqrt(v)``.  Built from warm-up draws and then held fixed, the
    coordinates keep the chains that use them exact.  Autocorrelated draws understate a
    slowly mixing shell's variance, so a shell the draws have not yet crossed is widened
    less than it should be.

    Args:
        field_scale: ``(n, n, n)`` positive widths the draws were sampled with.
        omega_draws: ``(S, C, n^3)`` or ``(S, n^3)`` finite white-noise draws (``S`` draws of
            ``C`` chains, flattened fields in C order), at least 2 in all.

    Returns:
        ``(scale, spread)``: the new ``(n, n, n)`` widths, and ``(n, n, n)`` ``sqrt(v)``, the
        draws' regularised spread per shell in units of the old widths (1 where the old
        widths were right).

    Raises:
        ValueError: a bad ``field_scale``, draws that are not finite, fewer than 2 or not
            ``n^3`` per field.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> omega = rng.standard_normal((400, 2, 4 ** 3)) * 2.0      # white noise twice as wide
        >>> scale, spread = scales_from_draws(np.ones((4, 4, 4)), omega)
        >>> bool(np.all(np.abs(spread - 2.0) < 0.3))
        True
    """
    shape = np.shape(field_scale)
    if len(shape) != 3 or len(set(shape)) != 1 or shape[0] < 2:
        raise ValueError(f"field_scale must be a cubic (n, n, n) array of widths. Received: field_scale.shape={shape}")
    n = shape[0]
    scale = _field_scale(field_scale, n)
    try:
        draws = np.asarray(omega_draws, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"omega_draws must be an array of numbers. Received: omega_draws={omega_draws!r}") from None
    if draws.ndim not in (2, 3) or draws.shape[-1] != n ** 3 or draws.size < 2 * n ** 3:
        raise ValueError(f"omega_draws must be (S, C, {n ** 3}) or (S, {n ** 3}) with at least 2 draws, to match "
                         f"field_scale's n={n}. Received: omega_draws.shape={draws.shape}")
    check_finite_array("omega_draws", draws)
    u = hartley_coefficients(draws.reshape((-1, n, n, n))) / scale          # hartley3(omega) / field_scale
    count = u.shape[0]
    var = shell_average(u.var(axis=0, ddof=1))
    spread = np.sqrt((count / (count + 5.0)) * var + 5.0 / (count + 5.0))
    return scale * spread, spread
