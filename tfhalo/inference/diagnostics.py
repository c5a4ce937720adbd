"""Chains as ArviZ ``InferenceData`` (NetCDF) and the convergence checks Stan users trust.

* :func:`to_inference_data`: draws -> group ``posterior`` (dims ``chain``,
  ``draw``, ...), sampler statistics -> ``sample_stats`` (ArviZ's names:
  ``diverging``, ``energy``, ``acceptance_rate``, ``step_size``, ``n_steps``,
  ``lp``, ``tree_depth``), the MAP and the adapted inverse mass matrix ->
  ``constant_data``, the sampler config -> attributes; ``arviz.summary``,
  ``arviz.plot_trace`` and ``arviz.bfmi`` work on it directly.
* :func:`save_inference_data` / :func:`load_inference_data`: NetCDF4 through
  ``h5netcdf``, written under a temporary name and renamed, so a reader never
  sees a partial file.
* :func:`convergence_summary`: rank-normalised split R-hat, bulk and tail
  ESS and Monte Carlo standard errors (ArviZ's ``rhat``, ``ess``, ``mcse``),
  divergences and E-BFMI, as a JSON-ready dict.
* :func:`posterior_contraction`: ``1 - Var_post / Var_prior`` per parameter
  and, given the generating values, their posterior z-scores.

References:
    Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
    folding, and localization: An improved R-hat for assessing convergence of
    MCMC", Bayesian Analysis 16, 667, arXiv:1903.08008.
    Betancourt (2017), "A Conceptual Introduction to Hamiltonian Monte Carlo",
    arXiv:1701.02434 (divergences, E-BFMI).
    Kumar, Carroll, Hartikainen & Martin (2019), "ArviZ a unified library for
    exploratory analysis of Bayesian models in Python", JOSS 4, 1143.

Example:
    >>> idata = chains.to_inference_data(parameter_names=names, map_estimate=theta_map)   # doctest: +SKIP
    >>> save_inference_data(idata, "out/posterior.nc")                                      # doctest: +SKIP
    >>> convergence_summary(load_inference_data("out/posterior.nc"))["converged"]          # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from tfhalo.atomic import atomic_path
from tfhalo.validation import check_finite_array, check_float, check_index_array

RHAT_MAX = 1.01
ESS_MIN = 400.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _arviz():
    # ArviZ 0.2x announces its 1.0 refactor on import; the announcement is not about this code.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz

    return arviz


def _variables(variables, p):
    out = {}
    if not isinstance(variables, dict) or not variables:
        raise ValueError("variables must be a non-empty dict {name: (indices, shape)}. "
                         f"Received: variables={variables!r}")
    for name, spec in variables.items():
        if not isinstance(name, str) or not _NAME.match(name) or name in ("chain", "draw"):
            raise ValueError(f"variables keys must be identifiers. Received: variables key {name!r}")
        try:
            index, shape = spec
        except (TypeError, ValueError):
            raise ValueError(f"variables[{name!r}] must be (indices or slice, shape). Received: {spec!r}") from None
        index = np.arange(p)[index] if isinstance(index, slice) else check_index_array(f"variables[{name!r}]", index, p)
        try:
            shape = tuple(int(n) for n in np.atleast_1d(np.asarray(shape, dtype=np.int64)))
        except (TypeError, ValueError):
            raise ValueError(f"variables[{name!r}] shape must be a tuple of integers. Received: {spec!r}") from None
        if int(np.prod(shape)) != index.size or index.size == 0:
            raise ValueError(f"variables[{name!r}] has {index.size} indices but shape {shape}. "
                             f"Received: variables[{name!r}]={spec!r}")
        out[name] = (index, shape)
    return out


def to_inference_data(chains, parameter_names=None, variables=None, map_estimate=None):
    """``arviz.InferenceData`` of :class:`~tfhalo.inference.Chains`.

    Args:
        chains: the result of :func:`tfhalo.inference.sample`.
        parameter_names: ``P`` names, the coordinates of dimension ``parameter`` of the one
            posterior variable ``theta`` (default ``0 .. P-1``).
        variables: instead of ``theta``, named variables ``{name: (indices or slice, shape)}``
            cut from the flat ``P`` vector (e.g. ``{"noise": (slice(0, 32768), (32, 32, 32)),
            "bias": (slice(32768, None), (17,))}``); not with ``parameter_names``.
        map_estimate: optional ``(P,)`` mode, stored as ``constant_data["map"]`` (dim ``parameter``)
            so the file is self-contained.

    Returns:
        ``arviz.InferenceData`` with groups ``posterior``, ``sample_stats``, ``constant_data``.

    Raises:
        ValueError: names of the wrong length or not unique, bad ``variables``, a
            ``map_estimate`` of the wrong shape or not finite.

    Example:
        >>> idata = to_inference_data(chains, parameter_names=["a", "b"])   # doctest: +SKIP
        >>> idata.posterior["theta"].dims
        ('chain', 'draw', 'parameter')
    """
    az = _arviz()
    samples = np.asarray(chains.samples)
    s, c, p = samples.shape
    if parameter_names is not None and variables is not None:
        raise ValueError("pass parameter_names (one variable theta) or variables (named variables), not both. "
                         f"Received: parameter_names={parameter_names!r}, variables={variables!r}")
    names = np.arange(p)
    if parameter_names is not None:
        names = [str(n) for n in parameter_names]
        if len(names) != p or len(set(names)) != p:
            raise ValueError(f"parameter_names must be {p} distinct names. Received: {len(names)} names "
                             f"({len(set(names))} distinct)")
        names = np.array(names)
    if variables is None:
        posterior = {"theta": samples.transpose(1, 0, 2)}
        dims = {"theta": ["parameter"]}
    else:
        posterior, dims = {}, {}
        for name, (index, shape) in _variables(variables, p).items():
            posterior[name] = samples[:, :, index].transpose(1, 0, 2).reshape((c, s) + shape)
    constant = {"inverse_mass_matrix": np.asarray(chains.inverse_mass_matrix, np.float64)}
    # One adapted mass matrix, or one per chain group (SamplerConfig.chain_groups).
    dims["inverse_mass_matrix"] = (["sampling_coordinate"] if constant["inverse_mass_matrix"].ndim == 1
                                   else ["chain_group", "sampling_coordinate"])
    if map_estimate is not None:
        m = np.asarray(map_estimate, np.float64)
        if m.shape != (p,) or not np.all(np.isfinite(m)):
            raise ValueError(f"map_estimate must be a finite ({p},) vector. Received: map_estimate.shape={m.shape}")
        constant["map"] = m
        dims["map"] = ["parameter"]
    stats = {k: np.asarray(v).T for k, v in chains.sample_stats.items()}
    idata = az.from_dict(posterior=posterior, sample_stats=stats, constant_data=constant,
                         coords={"parameter": names}, dims=dims)
    attrs = {"inference_library": "tensorflow_probability", "sampler": "tfhalo.inference.sample",
             "sampler_config": json.dumps(chains.config.to_dict(), sort_keys=True),
             "step_size": _attr_value(chains.step_size), "sampling_seconds": float(chains.seconds),
             "n_gradient_evaluations": int(chains.n_gradient_evaluations),
             "n_warmup_divergent": int(chains.n_warmup_divergent)}
    if getattr(chains, "trajectory_length", None) is not None:
        # ChEES's adapted longest trajectory (one per chain group), in the sampling coordinates.
        attrs["trajectory_length"] = _attr_value(chains.trajectory_length)
    for group in ("posterior", "sample_stats"):
        getattr(idata, group).attrs.update(attrs)
    return idata


def _attr_value(x):
    # NetCDF attributes take a number or a 1-D array (a step size per chain group).
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else x.reshape(-1)


def _check_path(name, path):
    if not isinstance(path, (str, Path)) or str(path) == "":
        raise ValueError(f"{name} must be a file path. Received: {name}={path!r}")
    return Path(path)


def _is_inference_data_file(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "posterior" in f or "sample_stats" in f
    except OSError:
        return False


def save_inference_data(idata, path) -> Path:
    """Write ``idata`` to ``path`` as NetCDF4 (``h5netcdf``), atomically.

    An existing ArviZ NetCDF file at ``path`` is replaced (re-running a study rewrites its
    own output); any other existing file is refused, so an input is never overwritten.

    Args:
        idata: ``arviz.InferenceData``.
        path: destination file (its directory is created if missing).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``idata`` is not ``InferenceData``; ``path`` is empty, a directory, or an
            existing file that is not an ArviZ NetCDF file.

    Example:
        >>> save_inference_data(idata, "runs/demo/neural_bias/posterior.nc")   # doctest: +SKIP
    """
    az = _arviz()
    if not isinstance(idata, az.InferenceData):
        raise ValueError(f"idata must be an arviz.InferenceData. Received: idata of type {type(idata).__name__}")
    path = _check_path("path", path)
    if path.is_dir():
        raise ValueError(f"path must be a file, not a directory. Received: path='{path}'")
    if path.exists() and not _is_inference_data_file(path):
        raise ValueError("path exists and is not an ArviZ NetCDF file; refusing to overwrite it. "
                         f"Received: path='{path}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.nc") as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    return path


def load_inference_data(path):
    """Read an ``InferenceData`` NetCDF file into memory (the file is closed on return).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is empty or not an ArviZ NetCDF file.

    Example:
        >>> idata = load_inference_data("runs/demo/neural_bias/posterior.nc")   # doctest: +SKIP
    """
    az = _arviz()
    path = _check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at path='{path}'")
    if not _is_inference_data_file(path):
        raise ValueError("path is not an ArviZ NetCDF file (no posterior or sample_stats group). "
                         f"Received: path='{path}'")
    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(str(path), engine="h5netcdf")


def _flat(dataset):
    from arviz.labels import BaseLabeller
    from arviz.sel_utils import xarray_var_iter

    labeller = BaseLabeller()
    out = {}
    for var, sel, isel, values in xarray_var_iter(dataset, combined=True, skip_dims={"chain", "draw"}):
        out[labeller.make_label_flat(var, sel, isel)] = float(values)
    return out


def convergence_summary(idata, var_names=None, rhat_max: float = RHAT_MAX, ess_min: float = ESS_MIN) -> dict:
    """Rank-normalised split R-hat, bulk / tail ESS, MCSE, divergences and E-BFMI of ``idata``.

    Args:
        idata: ``arviz.InferenceData`` with a ``posterior`` group (and ``sample_stats`` with
            ``diverging`` / ``energy`` for those checks).
        var_names: posterior variables to check (default: all).
        rhat_max: converged needs every R-hat below it (1.01: Vehtari et al. 2021).
        ess_min: converged needs every bulk and tail ESS at least this (400: Vehtari et al. 2021).

    Returns:
        JSON-ready dict: ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``, ``n_divergent``,
        ``n_draws``, ``n_chains``, ``min_bfmi`` (None without energies), ``converged``
        (``max_rhat < rhat_max``, both ESS ``>= ess_min``, no divergence), the thresholds, and
        ``parameters``: ``{label: {mean, sd, mcse_mean, mcse_sd, ess_bulk, ess_tail, rhat}}``
        with ArviZ's labels (``theta[name]``), the rows ``arviz.summary`` prints.

    Raises:
        ValueError: no posterior, fewer than 4 draws per chain, bad thresholds.

    Example:
        >>> s = convergence_summary(idata)                       # doctest: +SKIP
        >>> s["max_rhat"] < 1.01 and s["min_ess_bulk"] >= 400    # doctest: +SKIP
    """
    az = _arviz()
    if not isinstance(idata, az.InferenceData) or "posterior" not in idata.groups():
        raise ValueError("idata must be an arviz.InferenceData with a posterior group. "
                         f"Received: idata of type {type(idata).__name__}")
    rhat_max = check_float("rhat_max", rhat_max, positive=True)
    ess_min = check_float("ess_min", ess_min)
    post = idata.posterior
    n_chains, n_draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    if n_draws < 4:
        raise ValueError(f"R-hat and ESS need at least 4 draws per chain. Received: {n_draws} draws")
    if var_names is not None:
        var_names = [str(v) for v in np.atleast_1d(var_names)]
        missing = [v for v in var_names if v not in post.data_vars]
        if missing or not var_names:
            raise ValueError(f"var_names must name posterior variables {list(post.data_vars)}. "
                             f"Received: var_names={var_names!r}")
    kw = dict(var_names=var_names)
    sub = post if var_names is None else post[var_names]
    with warnings.catch_warnings():
        # A constant parameter gives 0/0 in ArviZ's formulas: NaN, reported (and not converged).
        warnings.simplefilter("ignore", RuntimeWarning)
        columns = {
            "mean": _flat(sub.mean(("chain", "draw"))),
            "sd": _flat(sub.std(("chain", "draw"), ddof=1)),
            "mcse_mean": _flat(az.mcse(idata, method="mean", **kw)),
            "mcse_sd": _flat(az.mcse(idata, method="sd", **kw)),
            "ess_bulk": _flat(az.ess(idata, method="bulk", **kw)),
            "ess_tail": _flat(az.ess(idata, method="tail", **kw)),
            "rhat": _flat(az.rhat(idata, method="rank", **kw)),
        }
    labels = list(columns["rhat"])
    params = {k: {col: columns[col][k] for col in columns} for k in labels}

    def worst(values, fn):
        values = np.array(values, np.float64)
        return float("nan") if np.any(np.isnan(values)) else float(fn(values))

    stats = idata.sample_stats if "sample_stats" in idata.groups() else None
    n_div = int(stats["diverging"].sum()) if stats is not None and "diverging" in stats else 0
    min_bfmi = None
    if stats is not None and "energy" in stats:
        min_bfmi = float(np.min(az.bfmi(idata)))
    max_rhat = worst([v["rhat"] for v in params.values()], np.max)
    min_bulk = worst([v["ess_bulk"] for v in params.values()], np.min)
    min_tail = worst([v["ess_tail"] for v in params.values()], np.min)
    converged = bool(max_rhat < rhat_max and min_bulk >= ess_min and min_tail >= ess_min and n_div == 0)
    return {
        "max_rhat": max_rhat,
        "min_ess_bulk": min_bulk,
        "min_ess_tail": min_tail,
        "n_divergent": n_div,
        "n_draws": n_draws,
        "n_chains": n_chains,
        "min_bfmi": min_bfmi,
        "converged": converged,
        "rhat_max": rhat_max,
        "ess_min": ess_min,
        "parameters": params,
    }


def posterior_contraction(draws, prior_sd, truth=None, mcse_mean=None, mcse_sd=None) -> dict:
    """How far the data narrow each parameter's prior, and where a known truth falls in its posterior.

    The contraction ``1 - Var_post / Var_prior`` is near 1 for a parameter the data
    determine and near 0 for one whose posterior is still its prior (Betancourt 2018;
    Schad, Betancourt & Vasishth 2021).  A sampler crossing a nearly prior-wide direction
    with steps set by the well-determined ones mixes slowly there, so a low contraction
    tells a reader which R-hat to expect to lag.  With a ``truth`` (a mock's generating
    values) the posterior z-score ``(truth - mean) / sd`` checks the bias parameters the
    way coverage checks the field.

    Args:
        draws: ``(..., P)`` finite posterior draws (chains and draws pooled), at least 2.
        prior_sd: the prior's standard deviation, a positive scalar or ``(P,)``.
        truth: optional ``(P,)`` finite generating values.
        mcse_mean, mcse_sd: optional ``(P,)`` Monte Carlo standard errors of the posterior
            mean and sd (e.g. from :func:`convergence_summary`), propagated to first order
            into ``contraction_se`` and ``z_se``; NaN (ArviZ's value for a chain that did
            not move) stays NaN there.  ``mcse_mean`` enters ``z_se`` only, so without a
            ``truth`` it is checked and then unused (one call serves a mock and a real
            catalogue alike).

    Returns:
        JSON-ready dict of ``(P,)`` lists: ``posterior_sd``, ``contraction``, and
        ``contraction_se`` (with ``mcse_sd``); ``z`` and ``z_se`` (with ``truth`` and
        ``mcse_mean``), else None.  A parameter whose draws are all equal has ``z`` of +-inf
        or NaN.

    Raises:
        ValueError: non-finite or too few draws, a non-positive prior sd, or a ``truth`` /
            MCSE of another length, naming the argument.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> c = posterior_contraction(rng.normal(0.0, [1.0, 6.0], size=(20000, 2)), 10.0)
        >>> np.round(c["contraction"], 1).tolist()                 # 1 - 1/100, 1 - 36/100
        [1.0, 0.6]

    References:
        Betancourt (2018), "Calibrating Model-Based Inferences and Decisions", arXiv:1803.08393.
        Schad, Betancourt & Vasishth (2021), "Toward a principled Bayesian workflow in cognitive
        science", Psychological Methods 26, 103, arXiv:1904.12765.
    """
    x = check_finite_array("draws", np.asarray(draws, np.float64))
    if x.ndim < 2 or x.shape[-1] < 1 or x.size < 2 * x.shape[-1]:
        raise ValueError(f"draws must be (..., P) with at least 2 draws. Received: draws.shape={x.shape}")
    p = x.shape[-1]
    x = x.reshape(-1, p)

    def per_parameter(name, value, allow_nan=False):
        arr = np.asarray(value, np.float64)
        check_finite_array(name, np.where(np.isnan(arr), 0.0, arr) if allow_nan else arr)
        if allow_nan and np.any(arr < 0):
            raise ValueError(f"{name} must be non-negative. Received: {name}={arr.tolist()}")
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != p):
            raise ValueError(f"{name} must be a scalar or one value per parameter ({p}). "
                             f"Received: {name}.shape={arr.shape}")
        return np.broadcast_to(arr, (p,))

    prior = per_parameter("prior_sd", prior_sd)
    if np.any(prior <= 0):
        raise ValueError(f"prior_sd must be positive. Received: prior_sd={np.asarray(prior_sd).tolist()}")
    mean, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    contraction = 1.0 - (sd / prior) ** 2
    out = {"posterior_sd": sd.tolist(), "contraction": contraction.tolist(), "contraction_se": None,
           "z": None, "z_se": None}
    mcse_mean = None if mcse_mean is None else per_parameter("mcse_mean", mcse_mean, True)
    if mcse_sd is not None:
        # d(1 - s^2/sigma^2) = -2 s ds / sigma^2
        out["contraction_se"] = (2.0 * sd * per_parameter("mcse_sd", mcse_sd, True) / prior**2).tolist()
    if truth is not None:
        t = np.asarray(truth, np.float64)
        if t.ndim != 1:
            raise ValueError(f"truth must be (P,) with P = {p}. Received: truth.shape={t.shape}")
        t = per_parameter("truth", t)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (t - mean) / sd
        out["z"] = z.tolist()
        if mcse_mean is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["z_se"] = (mcse_mean / sd).tolist()
    return out
