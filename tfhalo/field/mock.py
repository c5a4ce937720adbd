"""Self-consistent mock halo catalogues: draws from the Poisson process of paper eq. 16.

Given white noise ``omega`` and bias parameters ``theta``, the field-level
likelihood of Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020),
"Neural physical engines for inferring the halo mass distribution function",
MNRAS 494, 50, arXiv:1909.06379 (eq. 16) is that of a Poisson point process in
(position, mass) whose intensity per unit volume and unit mass is
``n(M | psi_v)``, constant within voxel ``v``. A mock drawn from it is the
data of a calibration test in which the model is exactly right.

The mixture density head (:mod:`tfhalo.layers.mixture_density`) gives

    n(M | psi) = sum_j alpha_j exp(-mu_j) Normal(ln M; mu_j, sigma_j)   per unit M.

With ``x = ln M``, ``dM = e^x dx`` and completing the square,
``e^(x - mu) Normal(x; mu, s) = e^(s^2 / 2) Normal(x; mu + s^2, s)``, so per unit ``ln M``

    n(M) M = sum_j alpha_j exp(sigma_j^2 / 2) Normal(ln M; mu_j + sigma_j^2, sigma_j).

Above ``x_th = ln M_th`` component ``j`` holds
``w_j = alpha_j exp(sigma_j^2 / 2) Q(a_j)``, ``a_j = (x_th - mu_j - sigma_j^2) / sigma_j``
(``Q`` the normal survival function); ``V sum_j w_j`` is the voxel's expected
count ``V int_{M_th} n dM`` (the head's ``integral_above_threshold``). So:

1. the count of voxel ``v`` is ``Poisson(V sum_j w_vj)``;
2. each of its halos picks component ``j`` with probability ``w_vj / sum_j w_vj``
   and draws ``ln M`` from ``Normal(mu_j + sigma_j^2, sigma_j)`` truncated to
   ``[x_th, inf)`` (:data:`scipy.stats.truncnorm`);
3. its position is uniform in the voxel's nearest-grid-point cell
   ``[(i - 1/2) h, (i + 1/2) h)`` per axis (``h = L / n``), wrapped into
   ``[0, L)``, so that :class:`~tfhalo.field.posterior.FieldCatalogue` bins it
   back into voxel ``v``.

Example:
    >>> from tfhalo.bias import build_model
    >>> from tfhalo.field.forward import LPTForwardModel
    >>> from tfhalo.sim.ics import white_noise
    >>> forward = LPTForwardModel(8, 32.0)
    >>> model = build_model(math.log(1e12), 8, dtype="float64")
    >>> theta = fit.theta                      # (17,) e.g. a MAP bias fit (tfhalo.bias.fit_map)
    >>> cat = draw_mock_catalogue(forward, model, white_noise(8, 1), theta, seed=2)
    >>> cat.halo_counts().shape
    (8, 8, 8)
"""

from __future__ import annotations

import numpy as np
from keras import ops
from scipy import special, stats

from tfhalo.bias.fields import DEFAULT_DENSITY_FLOOR
from tfhalo.layers.mixture_density import SIGMA_FLOOR
from tfhalo.field.posterior import (FieldCatalogue, FieldLevelPosterior, _check_forward, _model_params, _prepare_model,
                                    log_density_of)
from tfhalo.sim.grid import wrap_periodic
from tfhalo.validation import check_finite_array, check_float, check_int, check_seed

__all__ = ["draw_mock_catalogue", "mock_intensity", "bias_recovery"]

# Offsets within a cell are drawn from [-1/2, 1/2) shrunk by this factor, so
# that rounding in (i + u) h cannot carry a halo across the cell edge into the
# neighbouring voxel; the bias it introduces (1e-9 of a voxel) is far below
# anything a position is used for.
_EDGE_SHRINK = 1.0 - 1e-9


def _check_inputs(forward, model, omega, theta, seed, density_floor):
    _check_forward(forward)
    n = int(forward.n_grid)
    omega = check_finite_array("omega", np.asarray(omega, dtype=np.float64))
    if omega.shape != (n, n, n):
        raise ValueError(
            f"omega must have shape ({n}, {n}, {n}) (forward.n_grid={n}). Received: omega.shape={omega.shape}"
        )
    if not hasattr(model, "log_mass_threshold"):
        raise ValueError(f"model must be a tfhalo.bias.NeuralBiasModel. Received: model of type {type(model).__name__}")
    model, layout = _prepare_model(model, n, float(model.log_mass_threshold))
    theta = check_finite_array("theta", np.asarray(theta, dtype=np.float64))
    if theta.shape != (layout.size,):
        raise ValueError(
            f"theta must have shape ({layout.size},) (the model's parameters). Received: theta.shape={theta.shape}"
        )
    seed = check_seed("seed", seed, allow_none=False)
    density_floor = check_float("density_floor", density_floor, positive=True)
    return omega, model, layout, theta, seed, density_floor


def mock_intensity(forward, model, omega, theta, density_floor: float = DEFAULT_DENSITY_FLOOR):
    """Per-voxel mixture of the Poisson process: ``(log_weight (n^3, K), loc (n^3, K), scale (n^3, K))``.

    ``exp(log_weight)`` summed over components and times the voxel volume is
    the expected count; component ``j`` of voxel ``v`` is
    ``Normal(loc, scale)`` in ``ln M`` truncated below ``ln M_th`` (see the
    module docstring). NumPy float64.

    Args:
        forward: an :class:`~tfhalo.field.forward.LPTForwardModel`.
        model: a :class:`~tfhalo.bias.model.NeuralBiasModel`.
        omega: ``(n, n, n)`` white noise.
        theta: ``(P,)`` bias parameters.
        density_floor: floor on ``1 + delta``.

    Returns:
        ``(log_weight, loc, scale)``, each ``(n^3, K)``: ``log_weight`` is
        ``ln[alpha exp(sigma^2/2) Q(a)]`` per unit volume.
    """
    omega, model, layout, theta, _, density_floor = _check_inputs(forward, model, omega, theta, 0, density_floor)
    return _intensity(forward, model, layout, omega, theta, density_floor)


def _intensity(forward, model, layout, omega, theta, density_floor):
    density = forward.density(ops.convert_to_tensor(omega[None], dtype=getattr(forward, "dtype", "float64")))
    log_density = log_density_of(density, density_floor)
    params = _model_params(model, layout, ops.convert_to_tensor(theta, dtype=layout.dtype), log_density)
    params = np.asarray(ops.convert_to_numpy(params), dtype=np.float64).reshape(-1, params.shape[-1])
    k = params.shape[-1] // 3
    alpha, mu, sigma = params[:, :k], params[:, k:2 * k], params[:, 2 * k:]
    # The same floor on the widths as the head's own log density and integral.
    sigma = np.maximum(sigma, SIGMA_FLOOR)
    loc = mu + sigma**2
    a = (model.log_mass_threshold - loc) / sigma
    with np.errstate(divide="ignore"):
        log_weight = np.log(alpha) + 0.5 * sigma**2 + special.log_ndtr(-a)
    return log_weight, loc, sigma


def draw_mock_catalogue(
    forward, model, omega, theta, seed, density_floor: float = DEFAULT_DENSITY_FLOOR
) -> FieldCatalogue:
    """A halo catalogue drawn from the model's own Poisson process (paper eq. 16).

    Voxel ``v`` holds ``Poisson(V int_{M_th} n(M | psi_v) dM)`` halos; each
    takes component ``j`` with probability proportional to
    ``alpha_j exp(sigma_j^2 / 2) Q((ln M_th - mu_j - sigma_j^2) / sigma_j)`` and
    ``ln M ~ Normal(mu_j + sigma_j^2, sigma_j)`` truncated to ``[ln M_th, inf)``
    (derived from ``n(M)`` of the mixture head in the module docstring); its
    position is uniform in the voxel's nearest-grid-point cell. All randomness comes from
    ``numpy.random.Generator(PCG64(seed))``: the same arguments give the same
    catalogue. The generator's first draw is the ``(n^3,)`` voxel counts
    (``Generator.poisson`` of the expected counts, flat C order); then the
    components, the ln masses and the positions. Halos are listed voxel by
    voxel in flat-index order.

    Args:
        forward: an :class:`~tfhalo.field.forward.LPTForwardModel` (grid and box).
        model: a :class:`~tfhalo.bias.model.NeuralBiasModel` (built here if needed).
        omega: ``(n, n, n)`` finite white noise of the true initial conditions.
        theta: ``(P,)`` finite true bias parameters (``ParameterLayout`` order).
        seed: integer seed in ``[0, 2^63)``.
        density_floor: floor on ``1 + delta`` (as the likelihood uses).

    Returns:
        A :class:`~tfhalo.field.posterior.FieldCatalogue` on the forward
        model's grid with ``log_mass_threshold = model.log_mass_threshold``.

    Raises:
        ValueError: naming the argument, before any work: non-finite or
            wrongly shaped ``omega``/``theta``, a bad ``seed`` or
            ``density_floor``, a model that is not a NeuralBiasModel; after
            the draw, if the Poisson draw gives no halo at all (the message
            gives the expected count).

    Example:
        >>> cat = draw_mock_catalogue(forward, model, omega, theta, seed=0)
    """
    omega, model, layout, theta, seed, density_floor = _check_inputs(forward, model, omega, theta, seed, density_floor)
    n = int(forward.n_grid)
    box = float(forward.box_size)
    h = box / n
    volume = h**3
    log_weight, loc, scale = _intensity(forward, model, layout, omega, theta, density_floor)
    log_rate = special.logsumexp(log_weight, axis=-1)  # per unit volume
    expected = volume * np.exp(log_rate)
    if not np.all(np.isfinite(expected)):
        raise ValueError(
            "theta gives a non-finite expected halo count in some voxel (the mixture's exp(sigma^2/2) "
            f"overflows). Received: max expected={np.nanmax(expected)}"
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    counts = rng.poisson(expected)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(
            f"the mock has no halo: theta gives {expected.sum():.4g} expected halos in the box. Received: seed={seed}"
        )
    voxel = np.repeat(np.arange(n**3), counts)
    # Component of each halo: inverse-CDF of its voxel's categorical distribution.
    probs = np.exp(log_weight[voxel] - log_rate[voxel, None])
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(total)[:, None] * cdf[:, -1:]
    comp = np.minimum((u >= cdf).sum(axis=-1), probs.shape[-1] - 1)
    loc_h = loc[voxel, comp]
    scale_h = scale[voxel, comp]
    lower = (model.log_mass_threshold - loc_h) / scale_h
    ln_mass = stats.truncnorm.rvs(lower, np.inf, loc=loc_h, scale=scale_h, size=total, random_state=rng)
    # truncnorm's lower edge is exact up to rounding in loc + lower * scale.
    ln_mass = np.maximum(ln_mass, model.log_mass_threshold)
    sites = np.stack(np.unravel_index(voxel, (n, n, n)), axis=-1).astype(np.float64)
    offsets = (rng.random((total, 3)) - 0.5) * _EDGE_SHRINK
    positions = wrap_periodic((sites + offsets) * h, box)
    catalogue = FieldCatalogue(positions, ln_mass, box, n, model.log_mass_threshold)
    if not np.array_equal(catalogue.halo_voxel, voxel):
        raise RuntimeError("internal error: a mock halo was binned outside the voxel it was drawn for")
    return catalogue


def bias_recovery(forward, model, omega, theta, seeds, prior_scale: float = 1e3,
                  density_floor: float = DEFAULT_DENSITY_FLOOR, max_iterations: int = 5000,
                  progress: bool = False) -> dict:
    """The bias's maximum a posteriori over mocks drawn at a known field and bias: is it centred on the bias?

    For each seed a catalogue is drawn at ``(omega, theta)`` (:func:`draw_mock_catalogue`)
    and the bias's log posterior given the true field (eq. 16 plus a ``N(0,
    prior_scale^2)`` prior, :meth:`~tfhalo.field.posterior.FieldLevelPosterior.bias_conditional`)
    is maximised from ``theta`` by SciPy's L-BFGS-B.  With a wide prior that is the
    maximum-likelihood estimate, which a mock and a likelihood that agree centre on
    ``theta`` up to its O(1/N) bias: the mean offset over ``K`` mocks in units of its
    standard error ``sd / sqrt(K)`` is then a Student t per parameter.  (A posterior
    mean need not be centred: docs/field_level.md, "Calibration".)  The likelihood's score at
    ``theta`` is recorded for each mock too: its mean over mocks drawn at ``theta`` is exactly
    zero (Bartlett's first identity) when the mock and eq. 16 agree, with no optimiser involved.

    Args:
        forward: an :class:`~tfhalo.field.forward.LPTForwardModel`.
        model: a :class:`~tfhalo.bias.model.NeuralBiasModel`.
        omega: ``(n, n, n)`` the field's white noise.
        theta: ``(P,)`` the bias the mocks are drawn with (and the fits start from).
        seeds: at least 2 distinct non-negative mock seeds.
        prior_scale: the bias prior's sd in the fits (wide: the likelihood's maximum).
        density_floor: floor on ``1 + delta``.
        max_iterations: L-BFGS-B's limit per fit.
        progress: show a tqdm bar, one step per mock.

    Returns:
        JSON-ready dict: ``seeds``, ``prior_scale``, ``estimates`` ``(K, P)``, ``converged`` ``(K,)`` (L-BFGS-B's
        flag), ``n_halos`` ``(K,)``, and per parameter ``mean_offset``, ``sd`` (over
        the mocks), ``standard_error`` and ``t`` (``mean_offset / standard_error``);
        ``scores`` ``(K, P)``, the eq. 16 log-likelihood's gradient in the bias at ``theta``
        per mock, and ``score_t``, their mean over its standard error per parameter.

    Raises:
        ValueError: bad inputs (as :func:`draw_mock_catalogue`), fewer than 2 or
            repeated seeds, a non-positive ``prior_scale``, before any fit.

    Example:
        >>> r = bias_recovery(forward, model, omega_true, theta_fit, seeds=range(100, 124))
        >>> max(abs(t) for t in r["t"]) < 4     # doctest: +SKIP
        True
    """
    from scipy import optimize
    from tqdm.auto import tqdm

    from tfhalo import backend

    omega, model, _, theta, _, density_floor = _check_inputs(forward, model, omega, theta, 0, density_floor)
    seeds = [check_seed("seeds", s, allow_none=False) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must hold at least 2 distinct seeds. Received: seeds={seeds}")
    prior_scale = check_float("prior_scale", prior_scale, positive=True)
    max_iterations = check_int("max_iterations", max_iterations, minimum=1)
    estimates, converged, n_halos, scores = [], [], [], []
    for seed in tqdm(seeds, desc="mock fits", disable=not progress):
        catalogue = draw_mock_catalogue(forward, model, omega, theta, seed, density_floor=density_floor)
        post = FieldLevelPosterior(forward, model, catalogue, prior_scale=prior_scale, density_floor=density_floor)
        conditional = post.bias_conditional(post.log_density(ops.convert_to_tensor(omega[None])))

        compiled = backend.jit(lambda x, c=conditional: backend.value_and_gradient(lambda y: -c(y), x))

        def loss_and_grad(t):
            value, grad = compiled(backend.constant(t[None]))
            return float(backend.to_numpy(value)[0]), np.asarray(backend.to_numpy(grad), np.float64)[0]

        # The likelihood's own score at the truth (the prior's gradient, -theta / s^2, added back).
        scores.append(theta / prior_scale**2 - loss_and_grad(theta)[1])
        # SciPy's default ftol stops on a relative change of 2e-9 in a log posterior of order 1e4, far
        # from the maximum along the head's shallow directions; the gradient decides instead.
        fit = optimize.minimize(loss_and_grad, theta, jac=True, method="L-BFGS-B",
                                options=dict(maxiter=max_iterations, maxfun=4 * max_iterations, ftol=1e-15,
                                             gtol=1e-6))
        estimates.append(fit.x)
        converged.append(bool(fit.success))
        n_halos.append(int(catalogue.positions.shape[0]))
    offsets = np.asarray(estimates) - theta
    mean, sd = offsets.mean(axis=0), offsets.std(axis=0, ddof=1)
    se = sd / np.sqrt(len(seeds))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / se
    scores = np.asarray(scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        score_t = scores.mean(axis=0) / (scores.std(axis=0, ddof=1) / np.sqrt(len(seeds)))
    return {"seeds": seeds, "estimates": np.asarray(estimates).tolist(), "converged": converged, "n_halos": n_halos,
            "prior_scale": prior_scale, "mean_offset": mean.tolist(), "sd": sd.tolist(),
            "standard_error": se.tolist(), "t": t.tolist(), "scores": scores.tolist(), "score_t": score_t.tolist()}
