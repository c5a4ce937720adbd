"""The neural bias study: Charnock et al. (2020) against the Neyrinck et al. (2014) baseline.

Fits n(M | density environment), the neural physical engine (NPE) with a
mixture-density head, to the halo catalogues of a simulation suite; fits the
Neyrinck bias model to the same halos; scores both on a held-out simulation
at their maxima; samples the neural model's posterior (17 parameters for the
paper's two-Gaussian head) with :mod:`tfhalo.inference` in the local-linear
coordinates of :class:`~tfhalo.bias.reparam.LocalLinearReparametrization`;
and writes ``results.json``, ``report.md``, ``posterior.nc`` (ArviZ
InferenceData) and figures.

References:
    Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural
    physical engines for inferring the halo mass distribution function",
    MNRAS 494, 50, arXiv:1909.06379.
    Neyrinck, Aragon-Calvo, Jeong & Wang (2014), "A halo bias function measured
    deeply into voids without stochasticity", MNRAS 441, 646, arXiv:1309.6641.
    Vehtari, Gelman & Gabry (2017), "Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC", Statistics and Computing 27,
    1413, arXiv:1507.04544 (the standard error of a difference of summed
    log-likelihoods).
    Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
    folding, and localization: an improved R-hat for assessing convergence of
    MCMC", Bayesian Analysis 16, 667, arXiv:1903.08008.

Steps, each resumable (rerun the same call after an interruption):

1. data: the suite (:func:`tfhalo.studies.common.ensure_suite`), coarse
   density grids and halos above the mass threshold; every simulation but the
   last trains, the last is held out;
2. MAP: :func:`tfhalo.bias.fit.fit_map` (Adam + L-BFGS, also from the MAP
   reflected into the other half-space of the NPE's radial weights), cached;
3. Neyrinck baseline and held-out scores with their standard errors;
4. chains: :func:`tfhalo.inference.sample` with a checkpoint directory, saved
   as ``posterior.nc``;
5. predictive checks, figures, report.

Example:
    >>> from tfhalo.studies import neural_bias
    >>> cfg = neural_bias.Config.preset("quick", seed=0)
    >>> results = neural_bias.run(cfg, suite="runs/demo/suite", out="runs/demo/neural_bias")  # doctest: +SKIP
    >>> results["convergence"]["converged"]                                                   # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

from tfhalo.atomic import write_json_atomic, write_text_atomic
from tfhalo.evaluation.report import jsonable
from tfhalo.inference.config import MIN_ADAPTIVE_WARMUP
from tfhalo.validation import check_choice, check_float, check_int, check_probability

__all__ = [
    "Config",
    "DENSITY_QUANTILES",
    "PREDICTIVE_LN_MASS_ABOVE_THRESHOLD",
    "StudyData",
    "MapFit",
    "heldout_log_predictive",
    "heldout_scores",
    "load_data",
    "map_fit",
    "predictive_mass_function",
    "run",
    "sample_chains",
    "chains_likelihood",
    "precision_check",
    "sampler_setup",
    "sum_standard_error",
]

FIELDS = ("nbody", "lpt")
#: Precisions the chains' likelihood may be evaluated in (the MAP, Hessian and diagnostics are float64).
CHAINS_DTYPES = ("float64", "float32")
#: The float32 chains are reported as matching the float64 posterior when the
#: importance-sampling efficiency of the weights ``p64 / p32`` over the draws is at least this.
PRECISION_EFFICIENCY_MIN = 0.99
#: Draws per chain at which the float32 and float64 log posteriors are compared.
PRECISION_CHECK_DRAWS = 100
#: Convergence criteria the report checks (Vehtari et al. 2021).
RHAT_MAX = 1.01
ESS_MIN = 400.0

# Density bins of the figures and the predictive diagnostic: quantiles of the
# held-out voxels' log density (the lower half, then 30%, 15% and the densest 5%).
DENSITY_QUANTILES = (0.0, 0.5, 0.8, 0.95, 1.0)
# Masses (ln M - ln M_th) at which the predictive diagnostic reads the mass function.
PREDICTIVE_LN_MASS_ABOVE_THRESHOLD = (0.0, 0.5, 1.0, 2.0, 3.0)
# Posterior draws per chain read by the draw-level diagnostics (shares, predicted
# mass function, held-out predictive density): each costs a model evaluation.
DIAGNOSTIC_DRAWS = 200


#: :class:`tfhalo.inference.SamplerConfig` field -> :class:`Config` field, where they differ.

@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the neural bias study; every field is checked on construction.

    Args:
        name: preset the settings came from (recorded in the results).
        seed: master seed of a generated suite, of the MAP starts and of the
            Neyrinck fit's restarts.
        sampler_seed: seed of the chains' starts and transitions (default: ``seed``).
        sim_preset: preset of a generated suite (:data:`tfhalo.sim.PRESETS`).
        n_sims: simulations in the study, >= 2; the last is held out.
        n_grid: voxels per side of the density grid, >= 3 (the NPE's 3^3 kernel).
        threshold_particles: halo mass threshold in particles of the suite.
        threshold_mass: halo mass threshold in Msun/h; exactly one of the two is set.
        n_components: Gaussians of the mixture-density head (the paper's model: 2, 17 parameters).
        field: z = 0 density the model is fitted and scored on: ``"nbody"`` or ``"lpt"``.
        sample_field: density the chains sample with (default: ``field``); the
            paper fits the N-body field and samples with the LPT one.
        map_steps: Adam steps per MAP start.
        map_starts: seeded MAP starts (the best is kept).
        kernel: ``"nuts"``, ``"hmc"`` or ``"chees"`` (HMC with its trajectory length adapted
            across the chains of each group; at least 2 chains per group); see
            :class:`tfhalo.inference.SamplerConfig`.
        n_chains: chains.
        n_pilot: warm-up iterations and draws per chain of the pilot run whose draws'
            covariance preconditions the final chains (0: precondition with the MAP
            Hessian alone); 0 or at least 20.
        pilot_target_accept: the pilot's dual-averaging target acceptance, in (0, 1)
            (``None``: ``target_accept``).  The pilot's draws only estimate a covariance, so
            a rare divergent (rejected) transition there costs nothing, while a high
            target shortens its step and lengthens every one of its trajectories.
        n_warmup: warm-up (adaptation) iterations per chain, discarded: 0 (no
            adaptation) or at least the sampler's shortest adaptation schedule (20).
        n_samples: kept draws per chain, >= 4 (split R-hat needs two halves of two draws).
        leapfrog_steps: leapfrog steps per HMC transition (``kernel="hmc"``).
        max_tree_depth: largest NUTS tree depth (``kernel="nuts"``).
        target_accept: dual-averaging target acceptance probability, in (0, 1).
        step_scale: fraction of the adapted step size the kept draws take, in (0, 1]
            (:attr:`tfhalo.inference.SamplerConfig.step_scale`); the pilot samples at its
            adapted step.
        jit_compile: compile the MAP fit and the chains with XLA.
        devices: JAX devices the chains are split over (``n_chains`` must be a
            multiple); sharding does not change the chains, so it is not part of
            the cache keys.
        chain_groups: groups of chains sampled concurrently
            (:attr:`tfhalo.inference.SamplerConfig.chain_groups`); ``n_chains``
            must be a multiple.  On a CPU one batch of chains uses one core and
            waits at every step for its longest trajectory; one chain per group
            keeps every core busy until the last chain finishes.
        pool_warmup: with groups, warm all chains up as one batch (one step size
            and one mass matrix from the draws of all chains), then sample the
            groups with that kernel; ``False``: each group adapts its own
            (:attr:`tfhalo.inference.SamplerConfig.pool_warmup`).
        chains_dtype: precision of the likelihood the chains evaluate,
            ``"float64"`` or ``"float32"``.  The chains' state, the coordinates'
            Jacobian, the MAP, its Hessian and every diagnostic stay float64.  A
            float32 likelihood (about 1.7 times faster on a CPU) is an exact
            target of its own, ``exp(ln p_32)``; the study compares ``ln p_32``
            with ``ln p_64`` at thinned draws and reports the importance-sampling
            efficiency of the weights ``p_64 / p_32``, which bounds how far the
            two posteriors differ (:func:`precision_check`).

    Example:
        >>> Config.preset("quick", seed=1, n_samples=500).n_samples
        500
        >>> Config.preset("quick", n_warmup=-5)
        Traceback (most recent call last):
        ...
        ValueError: n_warmup must be at least 0. Received: n_warmup=-5
    """

    name: str = "custom"
    seed: int = 0
    sampler_seed: Optional[int] = None
    sim_preset: str = "quick"
    n_sims: int = 6
    n_grid: int = 10
    threshold_particles: Optional[float] = 50.0
    threshold_mass: Optional[float] = None
    n_components: int = 2
    field: str = "nbody"
    sample_field: Optional[str] = None
    map_steps: int = 1500
    map_starts: int = 3
    kernel: str = "nuts"
    n_chains: int = 4
    n_pilot: int = 200
    pilot_target_accept: Optional[float] = None
    n_warmup: int = 1000
    n_samples: int = 1000
    leapfrog_steps: int = 16
    max_tree_depth: int = 10
    target_accept: float = 0.9
    step_scale: float = 1.0
    jit_compile: bool = True
    devices: int = 1
    chain_groups: int = 1
    pool_warmup: bool = True
    chains_dtype: str = "float64"

    def __post_init__(self):
        from tfhalo.studies.common import check_config_header, check_sampler_settings

        def set_(field, value):
            object.__setattr__(self, field, value)

        check_config_header(self)
        set_("n_sims", check_int("n_sims", self.n_sims, minimum=2))
        set_("n_grid", check_int("n_grid", self.n_grid, minimum=3))
        if (self.threshold_particles is None) == (self.threshold_mass is None):
            raise ValueError("exactly one of threshold_particles and threshold_mass must be set. Received: "
                             f"threshold_particles={self.threshold_particles!r}, "
                             f"threshold_mass={self.threshold_mass!r}")
        for field in ("threshold_particles", "threshold_mass"):
            if getattr(self, field) is not None:
                set_(field, check_float(field, getattr(self, field), positive=True))
        set_("n_components", check_int("n_components", self.n_components, minimum=1))
        check_choice("field", self.field, FIELDS)
        if self.sample_field is not None:
            check_choice("sample_field", self.sample_field, FIELDS)
        set_("map_steps", check_int("map_steps", self.map_steps, minimum=1))
        set_("map_starts", check_int("map_starts", self.map_starts, minimum=1))
        set_("n_pilot", check_int("n_pilot", self.n_pilot, minimum=0))
        if 0 < self.n_pilot < MIN_ADAPTIVE_WARMUP:
            raise ValueError(f"n_pilot must be 0 or at least {MIN_ADAPTIVE_WARMUP}. Received: n_pilot={self.n_pilot}")
        if self.pilot_target_accept is not None:
            set_("pilot_target_accept", check_probability("pilot_target_accept", self.pilot_target_accept))
        check_choice("chains_dtype", self.chains_dtype, CHAINS_DTYPES)
        check_sampler_settings(self)

    @property
    def chains_seed(self) -> int:
        """The sampler's seed: ``sampler_seed``, or ``seed`` when unset."""
        return self.seed if self.sampler_seed is None else self.sampler_seed

    @property
    def chains_field(self) -> str:
        """The density the chains sample with: ``sample_field``, or ``field`` when unset."""
        return self.sample_field or self.field

    @classmethod
    def preset(cls, name: str = "quick", seed: int = 0, **overrides) -> "Config":
        """A preset's settings with ``seed`` and any field replaced.

        Setting one of ``threshold_particles`` / ``threshold_mass`` clears the other.
        A preset that runs one chain per group (``chain_groups == n_chains``) keeps
        doing so when only ``n_chains`` is overridden.

        Presets:
            quick: 6 ``"quick"`` simulations (64^3 particles in 40 Mpc/h), a 10^3
                grid (4 Mpc/h voxels, the paper's 3.9 Mpc/h, so the 3^3 kernel
                sees the same ~12 Mpc/h patch), threshold 50 particles
                (~9.5e11 Msun/h: FoF masses are noisy below ~50 particles), the
                paper's 17-parameter model; NUTS at a target acceptance of 0.995, 4
                chains in 4 groups of 1 (threads sharing the CPU cores), each run
                warmed up as one batch of the 4 chains: a pilot of 200 + 200
                iterations at a target acceptance of 0.9 whose draws' covariance
                preconditions 200 warm-up iterations and 1000 kept draws, taken at
                0.7 of the adapted step (``step_scale``); the chains evaluate the
                likelihood in float32 (``chains_dtype``), checked against float64 at
                their draws.  The small
                step keeps trajectories stable where they reach the extreme-density
                voxels, whose expected halo count grows like ``exp(sigma^2 / 2)`` in
                the mixture width, and NUTS lengthens the trajectory to match the
                step, which varies between catalogues. Trees are not capped below
                depth 10: at depth 7 with 600 draws, 2 of 5 runs failed R-hat (in
                one, the chains' step of 0.020 hit the cap in 99% of transitions; see
                ``docs/sampling_coordinates.md``, "Divergences").
            paper: the paper's set-up, 64^3 voxels over (250 Mpc/h)^3 and
                M_th = 2e12 Msun/h on four ``"charnock2020"`` simulations
                (three train, one held out).

        Raises:
            ValueError: unknown preset or field, or an invalid value (named).
        """
        from tfhalo.studies.common import preset_values

        values = preset_values(cls, PRESETS, name, overrides)
        if overrides.get("threshold_mass") is not None and "threshold_particles" not in overrides:
            values["threshold_particles"] = None
        if overrides.get("threshold_particles") is not None and "threshold_mass" not in overrides:
            values["threshold_mass"] = None
        if ("n_chains" in overrides and "chain_groups" not in overrides
                and values.get("chain_groups", 1) > 1 and values["chain_groups"] == values.get("n_chains")):
            values["chain_groups"] = overrides["n_chains"]
        values.update(overrides)
        return cls(name=name, seed=seed, **values)

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict."""
        return dataclasses.asdict(self)

    def sampler_config(self):
        """The :class:`tfhalo.inference.SamplerConfig` of the chains."""
        import tfhalo.inference as inf

        return inf.SamplerConfig(
            kernel=self.kernel, num_chains=self.n_chains, num_warmup=self.n_warmup, num_samples=self.n_samples,
            target_accept=self.target_accept, step_scale=self.step_scale, max_tree_depth=self.max_tree_depth,
            num_leapfrog_steps=self.leapfrog_steps, seed=self.chains_seed, jit_compile=self.jit_compile,
            devices=self.devices, chain_groups=self.chain_groups, pool_warmup=self.pool_warmup)

    def pilot_config(self):
        """The pilot run's :class:`tfhalo.inference.SamplerConfig` (``n_pilot`` warm-up and draws), or None."""
        if self.n_pilot == 0:
            return None
        # The pilot's draws only estimate the covariance: they are taken at the adapted step.
        return dataclasses.replace(self.sampler_config(), num_warmup=self.n_pilot, num_samples=self.n_pilot,
                                   seed=self.chains_seed + 1, step_scale=1.0, target_accept=self.pilot_accept)

    @property
    def pilot_accept(self) -> float:
        """The pilot's target acceptance: ``pilot_target_accept``, or ``target_accept`` when unset."""
        return self.target_accept if self.pilot_target_accept is None else self.pilot_target_accept


PRESETS = {
    "quick": dict(sim_preset="quick", n_sims=6, n_grid=10, threshold_particles=50.0, threshold_mass=None,
                  n_components=2, map_steps=1500, map_starts=3, kernel="nuts", n_chains=4,
                  n_pilot=200, pilot_target_accept=0.9, n_warmup=200, n_samples=1000, target_accept=0.995,
                  step_scale=0.7, chain_groups=4, chains_dtype="float32"),
    # ~0.8M voxels and ~87k halos per gradient evaluation.
    "paper": dict(sim_preset="charnock2020", n_sims=4, n_grid=64, threshold_particles=None, threshold_mass=2e12,
                  n_components=2, map_steps=5000, map_starts=4, kernel="hmc", leapfrog_steps=30, n_chains=4, n_pilot=500, n_warmup=1000,
                  n_samples=5000, target_accept=0.9),
}


# -- data ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StudyData:
    """The study's grids, catalogues, model and likelihoods.

    Attributes:
        paths: simulation files, the last held out.
        train: training :class:`~tfhalo.bias.fields.BiasData` (``config.field``).
        test: held-out :class:`~tfhalo.bias.fields.BiasData` (``config.field``).
        train_sample: training grids of the chains' field (``train`` itself when it is the same field).
        mass_threshold: ``M_th`` in Msun/h.
        particle_mass: of the first simulation, Msun/h.
        model: the float64 :class:`~tfhalo.bias.model.NeuralBiasModel`.
        like: training likelihood (MAP, train ln L).
        like_test: held-out likelihood.
        like_sample: the chains' likelihood.
        names: ``P`` readable parameter names.
    """

    paths: list
    train: list
    test: object
    train_sample: list
    mass_threshold: float
    particle_mass: float
    model: object
    like: object
    like_test: object
    like_sample: object
    names: list

    def fingerprint(self) -> str:
        """SHA-256 of every grid and catalogue the study fits, samples and scores."""
        return data_fingerprint([*self.train, self.test,
                                 *([] if self.train_sample is self.train else self.train_sample)])


def data_fingerprint(datas) -> str:
    """SHA-256 of :class:`~tfhalo.bias.fields.BiasData` contents (grids, halos, box, threshold, names), in order."""
    from tfhalo.studies import common

    return common.fingerprint(*[x for d in datas for x in (d.one_plus_delta, d.halo_voxel, d.halo_mass,
                                                          float(d.box_size), float(d.mass_threshold), d.name)])


def load_data(config: Config, paths) -> StudyData:
    """Density grids, catalogues, model and likelihoods of the study from its simulation files.

    Args:
        config: a :class:`Config`.
        paths: ``>= 2`` simulation files; the last is held out, the others train.

    Raises:
        ValueError: fewer than 2 simulations.
    """
    from tfhalo.bias import NeuralBiasLikelihood, bias_data_from_simulation, build_model
    from tfhalo.sim import load

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"the study needs at least 2 simulations (training, held out). Received: {len(paths)}")
    sims = [load(p) for p in paths]
    particle_mass = float(sims[0].particle_mass)
    threshold = config.threshold_mass or config.threshold_particles * particle_mass
    train = [bias_data_from_simulation(s, config.n_grid, threshold, source=config.field) for s in sims[:-1]]
    test = bias_data_from_simulation(sims[-1], config.n_grid, threshold, source=config.field)
    train_sample = train if config.chains_field == config.field else [
        bias_data_from_simulation(s, config.n_grid, threshold, source=config.chains_field) for s in sims[:-1]]
    model = build_model(test.log_mass_threshold, n_grid=config.n_grid, n_components=config.n_components,
                        dtype="float64")
    like = NeuralBiasLikelihood(model, train)
    like_test = NeuralBiasLikelihood(model, test)
    like_sample = like if train_sample is train else NeuralBiasLikelihood(model, train_sample)
    names = [n.split("/", 1)[-1] for n in like.layout.names()]
    return StudyData(paths=paths, train=train, test=test, train_sample=train_sample, mass_threshold=float(threshold),
                     particle_mass=particle_mass, model=model, like=like, like_test=like_test,
                     like_sample=like_sample, names=names)


# -- MAP ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MapFit:
    """The MAP of the neural model (see :class:`tfhalo.bias.fit.MapResult`).

    Attributes:
        theta: ``(P,)`` float64 MAP.
        hessian: ``(P, P)`` Hessian of ``-ln posterior`` at ``theta``.
        log_posterior: ln posterior at ``theta``.
        n_evaluations: log-density-and-gradient evaluations spent.
        other_half: ``{"log_posterior_below_map", "log_laplace_mass_ratio"}`` of the
            best point found in the other half-space of the NPE's radial weights, or None.
        reused: True when read from the cache.
    """

    theta: np.ndarray
    hessian: np.ndarray
    log_posterior: float
    n_evaluations: int
    other_half: Optional[dict]
    reused: bool = False


def _map_key(config: Config, data: StudyData) -> dict:
    return dict(step="map", data=data_fingerprint(data.train), n_components=config.n_components, n_grid=config.n_grid,
                mass_threshold=data.mass_threshold, field=config.field, map_steps=config.map_steps,
                map_starts=config.map_starts, seed=config.seed,
                mean_increment=data.model.mean_increment)


MAP_FILE = "map.npz"
NEYRINCK_FILE = "neyrinck.json"
CHAINS_FILE = "chains.json"
DIAGNOSTICS_FILE = "diagnostics.json"
FIGURES_FILE = "figures.json"
POSTERIOR_FILE = "posterior.nc"
#: Restarts of each maximum-likelihood fit of the Neyrinck baseline.
NEYRINCK_STARTS = 8


def map_cache(config: Config, data: StudyData, directory, overwrite: bool = False):
    """The :class:`~tfhalo.studies.common.Cache` of the MAP step in ``directory``.

    Keyed on the data's content and the MAP settings only (not the sampler's), so
    runs that differ only in their chains can share one fit.
    """
    from tfhalo.studies import common

    return common.Cache(directory, _map_key(config, data), overwrite=overwrite)


def map_fit(config: Config, data: StudyData, cache_dir, progress: bool = True, overwrite: bool = False) -> MapFit:
    """:func:`tfhalo.bias.fit.fit_map` on the training likelihood, cached as ``cache_dir/map.npz``.

    The model's parameters are set to the MAP.

    Raises:
        tfhalo.studies.common.StaleCacheError: ``map.npz`` holds a fit of other
            data or settings (and ``overwrite`` is off).
    """
    import json

    from tfhalo.bias.fit import fit_map

    cache = map_cache(config, data, cache_dir, overwrite)
    cached = cache.load(MAP_FILE)
    if cached is not None:
        fit = MapFit(theta=cached["theta"], hessian=cached["hessian"], log_posterior=float(cached["log_posterior"]),
                     n_evaluations=int(cached["n_evaluations"]), other_half=json.loads(str(cached["other_half"])),
                     reused=True)
    else:
        result = fit_map(data.like, steps=config.map_steps, n_starts=config.map_starts, seed=config.seed,
                         progress=progress, jit_compile=config.jit_compile)
        other = None if result.other_half is None else {
            "log_posterior_below_map": float(result.log_posterior - result.other_half["log_posterior"]),
            "log_laplace_mass_ratio": float(result.other_half["log_laplace_mass_ratio"])}
        fit = MapFit(theta=result.theta, hessian=result.hessian, log_posterior=float(result.log_posterior),
                     n_evaluations=int(result.n_evaluations), other_half=other)
        cache.save(MAP_FILE, theta=fit.theta, hessian=fit.hessian, log_posterior=fit.log_posterior,
                   n_evaluations=fit.n_evaluations, other_half=np.asarray(json.dumps(other)))
    data.like.layout.set(data.model, fit.theta)
    return fit


def neyrinck_fit(config: Config, data: StudyData, cache_dir, overwrite: bool = False):
    """The Neyrinck et al. (2014) baseline fitted to the training halos, cached as ``cache_dir/neyrinck.json``."""
    from tfhalo.bias.neyrinck import NeyrinckBias
    from tfhalo.studies import common

    cache = common.Cache(cache_dir, dict(step="neyrinck", data=data_fingerprint(data.train), seed=config.seed,
                                         n_starts=NEYRINCK_STARTS), overwrite=overwrite)
    state = cache.load(NEYRINCK_FILE)
    if state is not None:
        return NeyrinckBias.from_state(state)
    model = NeyrinckBias(n_starts=NEYRINCK_STARTS, seed=config.seed).fit(data.train)
    cache.save(NEYRINCK_FILE, model.get_state())
    return model


# -- scores ------------------------------------------------------------------------------------------------------


def sum_standard_error(terms) -> float:
    """Standard error of ``sum(terms)`` from the spread of its ``N`` terms: ``sqrt(N) * std(terms, ddof=1)``.

    The terms are treated as ``N`` independent draws of one distribution, as for
    the standard error of a difference of expected log predictive densities
    (Vehtari, Gelman & Gabry 2017, arXiv:1507.04544, eq. 24).

    Args:
        terms: ``(N,)`` finite values, ``N >= 2``.

    Example:
        >>> round(sum_standard_error([1.0, 3.0]), 6)   # sqrt(2) * sqrt(2)
        2.0
    """
    x = np.asarray(terms, np.float64).reshape(-1)
    if x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"terms must hold at least 2 finite values. Received: {x.size} values, "
                         f"{int(np.sum(~np.isfinite(x)))} non-finite")
    return float(math.sqrt(x.size) * x.std(ddof=1))


def heldout_scores(data: StudyData, theta, neyrinck) -> dict:
    """ln L of both models at their maxima on training and held-out halos, and the held-out difference's error.

    The held-out ln L of each model is a sum over voxels of independent Poisson
    terms (:meth:`~tfhalo.bias.likelihood.NeuralBiasLikelihood.voxel_log_likelihood`);
    the difference is the sum of the per-voxel differences, and its standard
    error is :func:`sum_standard_error` of them (voxels as the units, each
    holding its halos' ln n and minus its expected count).

    Returns:
        ``{"neural_train", "neural_test", "neyrinck_train", "neyrinck_test",
        "difference", "difference_standard_error", "difference_per_halo",
        "difference_per_halo_standard_error", "n_voxels", "n_halos"}``.
    """
    neural_voxels = data.like_test.voxel_log_likelihood(theta)
    neyrinck_voxels = neyrinck.voxel_log_likelihood(data.test)
    diff = neural_voxels - neyrinck_voxels
    se = sum_standard_error(diff)
    n_halos = data.test.n_halos
    return {
        "neural_train": float(data.like.log_likelihood(theta)),
        "neural_test": float(neural_voxels.sum()),
        "neyrinck_train": float(neyrinck.log_likelihood(data.train)),
        "neyrinck_test": float(neyrinck_voxels.sum()),
        "difference": float(diff.sum()),
        "difference_standard_error": se,
        "difference_per_halo": float(diff.sum() / n_halos),
        "difference_per_halo_standard_error": se / n_halos,
        "n_voxels": int(diff.size),
        "n_halos": int(n_halos),
    }


def heldout_log_predictive(log_likelihoods) -> dict:
    """The held-out log predictive density ``ln E_posterior[L_test]`` from posterior draws.

    Args:
        log_likelihoods: ``(D, C)`` held-out ln L of ``D`` draws from each of ``C`` chains.

    Returns:
        ``{"all_chains": ln mean_{d,c} L, "per_chain": [ln mean_d L per chain],
        "between_chain_standard_error": std of the per-chain values / sqrt(C) (None for one chain),
        "draws_per_chain": D}``; means are taken with log-sum-exp, as ln L runs to
        thousands of nats.

    Example:
        >>> heldout_log_predictive(np.zeros((10, 2)))["all_chains"]
        0.0
    """
    from scipy.special import logsumexp

    x = np.asarray(log_likelihoods, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"log_likelihoods must be a non-empty (draws, chains) array. Received shape {x.shape}")
    per_chain = logsumexp(x, axis=0) - np.log(x.shape[0])
    return {"all_chains": float(logsumexp(x) - np.log(x.size)),
            "per_chain": per_chain.tolist(),
            "between_chain_standard_error": (float(per_chain.std(ddof=1) / math.sqrt(x.shape[1]))
                                             if x.shape[1] > 1 else None),
            "draws_per_chain": int(x.shape[0])}


def _density_bins(data):
    """``(V,)`` density-bin index of each voxel of ``data`` and the bins' ``ln(1 + delta)`` edges."""
    log_rho = np.log(data.one_plus_delta).ravel()
    edges = np.quantile(log_rho, DENSITY_QUANTILES)
    return np.clip(np.digitize(log_rho, edges[1:-1]), 0, len(DENSITY_QUANTILES) - 2), edges


def _dn_dlnm(like_test, theta, ln_m) -> np.ndarray:
    """``(V, M)`` dn/dln M per unit volume in each voxel of the held-out grid."""
    head = like_test.model.head
    params = like_test.per_voxel(theta)["params"].reshape(-1, 3 * head.n_components)
    ln_n = np.asarray(head.log_number_density(params[:, None, :], ln_m[None, :]))
    return np.exp(ln_n + ln_m[None, :])


def predictive_mass_function(like_test, theta) -> np.ndarray:
    """``(B * M,)`` ln of the bin-averaged dn/dln M on the held-out grid (density bins x masses, row-major).

    Bins are :data:`DENSITY_QUANTILES` of the held-out voxels' density, masses
    ``ln M_th +`` :data:`PREDICTIVE_LN_MASS_ABOVE_THRESHOLD` (Fig. 2's curves).
    """
    ln_m = like_test.data[0].log_mass_threshold + np.asarray(PREDICTIVE_LN_MASS_ABOVE_THRESHOLD)
    bins, _ = _density_bins(like_test.data[0])
    dn = _dn_dlnm(like_test, theta, ln_m)
    return np.log(np.stack([dn[bins == b].mean(axis=0) for b in range(len(DENSITY_QUANTILES) - 1)])).ravel()


def _rank_rhat(values) -> np.ndarray:
    """Rank-normalised split R-hat (ArviZ) of ``(D, C, K)`` draws, per ``K``."""
    import arviz as az

    x = np.asarray(values, np.float64)
    ds = az.convert_to_dataset({"q": np.swapaxes(x, 0, 1)})  # (chain, draw, K)
    return np.asarray(az.rhat(ds)["q"].values, np.float64).reshape(-1)


# -- sampling ----------------------------------------------------------------------------------------------------


def sampler_setup(config: Config, data: StudyData, theta_map):
    """The chains' target, bijector and starting points.

    The chains run on ``z`` with ``theta = rep(v_map + chol(H_v^-1) z)``:
    ``rep`` is :class:`~tfhalo.bias.reparam.LocalLinearReparametrization` at the
    MAP, ``H_v`` the Hessian of ``-(ln p(rep(v)) + ln|d rep / d v|)`` at
    ``v_map = rep^-1(theta_map)`` (:func:`tfhalo.inference.affine_preconditioner`,
    eigenvalues floored at the prior's precision).

    Returns:
        ``(log_prob_fn, initial_state (C, P) in theta, bijector, rep)``: starts are
        dispersed about the MAP by half a Laplace width, at most half a unit
        along the flattest directions (a floored direction would otherwise throw
        a chain several prior widths away, into a region with no halos).
    """
    from tfhalo import backend

    import tfhalo.inference as inf
    from tfhalo.bias.fit import hessian_of
    from tfhalo.bias.reparam import LocalLinearReparametrization

    like = data.like_sample
    theta_map = np.asarray(theta_map, np.float64)
    rep = LocalLinearReparametrization(like, theta_map)
    v_map = np.asarray(rep.inverse(backend.constant(theta_map)), np.float64)

    def target_v(v):
        return like.log_posterior(rep.forward(v)) + rep.forward_log_det_jacobian(v, event_ndims=1)

    h_v = hessian_of(target_v, v_map)
    # With a pilot run, curvatures below 1 (flat or negative directions at the MAP, where the
    # posterior is not Gaussian) are floored at 1, the scale of the v coordinates: a floor
    # at the prior's precision would make the pilot's first steps 10 times too long there.
    floor = 1.0 if config.n_pilot else 1.0 / like.prior_scale**2
    bijector = backend.tfp.bijectors.Chain([rep, inf.affine_preconditioner(v_map, hessian=h_v, floor=floor)])
    eig, vec = np.linalg.eigh(h_v)
    rng = np.random.default_rng(config.chains_seed + 1)
    z = rng.normal(size=(config.n_chains, theta_map.size))
    v0 = v_map + 0.5 * (z / np.sqrt(np.maximum(eig, 1.0))) @ vec.T
    initial = np.asarray(rep.forward(backend.constant(v0)), np.float64)
    log_prob = _as_float64(chains_likelihood(config, data).log_posterior)
    return inf.batched(log_prob, config.n_chains // config.chain_groups), initial, bijector, rep


def _as_float64(fn):
    from keras import ops

    return lambda theta: ops.cast(fn(theta), "float64")


def chains_likelihood(config: Config, data: StudyData):
    """The likelihood the chains evaluate: ``data.like_sample``, or its twin in ``config.chains_dtype``.

    The twin has the same model, data and prior in another precision; it takes
    float64 parameter vectors (cast on entry) and returns its own dtype.
    """
    like = data.like_sample
    if config.chains_dtype == like.layout.dtype:
        return like
    from tfhalo.bias import NeuralBiasLikelihood, build_model

    model = build_model(like.model.log_mass_threshold, n_grid=config.n_grid, n_components=config.n_components,
                        dtype=config.chains_dtype)
    return NeuralBiasLikelihood(model, like.data, prior_scale=like.prior_scale)


def precision_check(reference, approximate, samples, draws_per_chain: int = PRECISION_CHECK_DRAWS) -> dict:
    """How far the posterior of a lower-precision likelihood lies from the float64 one, at chain draws.

    Chains run on ``ln p_a`` (``approximate.log_posterior``) sample ``p_a``
    exactly.  With ``d = ln p_64 - ln p_a`` at draws of ``p_a``, the
    self-normalised importance weights ``w ~ exp(d)`` turn them into draws of
    ``p_64``; their efficiency ``(sum w)^2 / (n sum w^2)`` is 1 when ``d`` is
    constant (the two posteriors are equal) and falls as ``exp(-var d)`` for
    small spreads.  Only the spread of ``d`` matters: a constant offset cancels
    in the normalisation.

    Args:
        reference: the float64 likelihood.
        approximate: the likelihood the chains ran on.
        samples: ``(S, C, P)`` draws.
        draws_per_chain: evenly spaced draws of each chain to compare at.

    Returns:
        ``{"dtype", "n_draws", "sd_nats", "range_nats", "importance_efficiency", "matches"}``,
        ``matches`` when the efficiency is at least :data:`PRECISION_EFFICIENCY_MIN`.
    """
    samples = np.asarray(samples, np.float64)
    picks = np.linspace(0, samples.shape[0] - 1, min(draws_per_chain, samples.shape[0])).astype(int)
    thetas = samples[picks].reshape(-1, samples.shape[-1])
    d = np.array([float(reference.log_posterior(t)) - float(approximate.log_posterior(t)) for t in thetas])
    if not np.all(np.isfinite(d)):
        efficiency = 0.0
    else:
        w = np.exp(d - d.max())
        efficiency = float(w.sum() ** 2 / (len(w) * np.sum(w**2)))
    return {"dtype": str(approximate.layout.dtype), "n_draws": int(d.size),
            "sd_nats": float(np.std(d, ddof=1)) if d.size > 1 else 0.0,
            "range_nats": float(np.max(d) - np.min(d)), "importance_efficiency": efficiency,
            "matches": bool(efficiency >= PRECISION_EFFICIENCY_MIN)}


def chains_cache(config: Config, data: StudyData, directory, overwrite: bool = False):
    """The :class:`~tfhalo.studies.common.Cache` of the chains step in ``directory``.

    Keyed on the MAP's key (the MAP is a function of it), the chains' field and
    the sampler's settings, so a stale file is found before the MAP is fitted.
    """
    from tfhalo.studies import common

    key = dict(step="chains", map=_map_key(config, data), data=data.fingerprint(), sample_field=config.chains_field,
               sampler=config.sampler_config().chain_fields(),
               n_pilot=config.n_pilot, chains_dtype=config.chains_dtype)
    # A pilot at the chains' own target keeps the key it had before the pilot's target was a setting.
    if config.n_pilot and config.pilot_accept != config.target_accept:
        key["pilot_target_accept"] = config.pilot_accept
    return common.Cache(directory, key, overwrite=overwrite)


def sample_chains(config: Config, data: StudyData, fit: MapFit, out, progress: bool = True,
                  overwrite: bool = False):
    """Chains of the neural model's posterior, saved as ``out/posterior.nc``; reused when finished.

    An interrupted run resumes from the sampler's checkpoint
    (``out/chains_checkpoint/<key>``), removed once ``posterior.nc`` is written;
    ``out/chains.json`` records the settings and the sampler's cost.

    Returns:
        ``(idata, sampler_info, reused)``: the :class:`arviz.InferenceData`
        (posterior ``theta`` with coordinate ``parameter``, sample stats, the MAP
        in ``constant_data``), ``{"seconds", "n_gradient_evaluations"}``, and
        whether it was read back.
    """
    from tfhalo import backend

    import tfhalo.inference as inf

    out = Path(out)
    cache = chains_cache(config, data, out, overwrite)
    path = out / POSTERIOR_FILE
    info = cache.load(CHAINS_FILE)
    if info is not None and path.is_file():
        return inf.load_inference_data(path), info, True
    checkpoint = out / "chains_checkpoint" / cache.fingerprint[:16]
    checkpoint.mkdir(parents=True, exist_ok=True)
    log_prob_fn, initial, bijector, rep = sampler_setup(config, data, fit.theta)
    seconds, n_grad = 0.0, 0
    if config.n_pilot:
        # The pilot's draws, mapped to the local-linear coordinates, give the final chains a
        # dense metric fitted to the bulk of the posterior rather than to the MAP's curvature.
        pilot = inf.sample(log_prob_fn, initial, config.pilot_config(), bijector=bijector, progress=progress,
                           checkpoint_dir=checkpoint / "pilot")
        draws_v = np.asarray(rep.inverse(backend.constant(pilot.samples.reshape(-1, pilot.samples.shape[-1]))))
        bijector = backend.tfp.bijectors.Chain([rep, inf.preconditioner_from_draws(draws_v)])
        initial = pilot.samples[-1]
        seconds, n_grad = pilot.seconds, pilot.n_gradient_evaluations
    chains = inf.sample(log_prob_fn, initial, config.sampler_config(), bijector=bijector, progress=progress,
                        checkpoint_dir=checkpoint / "final")
    idata = chains.to_inference_data(parameter_names=data.names, map_estimate=fit.theta)
    inf.save_inference_data(idata, path)
    info = {"seconds": float(chains.seconds + seconds),
            "n_gradient_evaluations": np.asarray(chains.n_gradient_evaluations + n_grad).tolist(),
            "n_pilot": config.n_pilot, "chains_dtype": config.chains_dtype}
    if config.chains_dtype != "float64":
        info["precision_check"] = precision_check(data.like_sample, chains_likelihood(config, data), chains.samples)
    cache.save(CHAINS_FILE, info)
    shutil.rmtree(out / "chains_checkpoint", ignore_errors=True)
    return idata, info, False


def posterior_samples(idata) -> np.ndarray:
    """``(S, C, P)`` float64 draws of ``theta`` from an InferenceData written by :func:`sample_chains`."""
    theta = idata.posterior["theta"]
    return np.asarray(theta.transpose("draw", "chain", ...).values, np.float64)


# -- the study -------------------------------------------------------------------------------------------------


def run(config: Config, suite, out, progress: bool = True, overwrite: bool = False) -> dict:
    """Run the study (resumable) and write ``out/results.json``, ``report.md``, ``posterior.nc`` and figures.

    Args:
        config: a :class:`Config`.
        suite: a suite directory (:func:`tfhalo.studies.common.ensure_suite`): a
            generated suite of ``config.sim_preset`` and ``config.seed`` is created
            or extended to ``config.n_sims`` simulations; any other directory of
            simulation files is used as it is (its first ``config.n_sims`` files).
        out: output directory (created).
        progress: show progress bars and one line per step.
        overwrite: discard cached steps made with other data or settings instead
            of raising :class:`~tfhalo.studies.common.StaleCacheError`.

    Returns:
        The results dict (also ``out/results.json``): ``"summary"`` rows
        (quantity, value, error, error_kind, paper, note), ``"config"``,
        ``"seed"``, ``"machine"`` and the details of every step.
    """
    from tfhalo.studies import common

    if not isinstance(config, Config):
        raise ValueError(f"config must be a neural_bias.Config. Received: config={type(config).__name__}")
    suite, out = common.check_run_paths(suite, out)
    from tfhalo.inference import check_chain_devices

    check_chain_devices(config.sampler_config())  # the backend and the machine can hold config.devices
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    t_start = time.perf_counter()
    timings = {}

    paths = common.ensure_suite(suite, config.sim_preset, config.n_sims, config.seed, progress=progress)
    data = load_data(config, list(paths)[:config.n_sims])
    # Stale caches are found (or discarded) before the MAP is fitted.
    map_cache(config, data, out, overwrite).check(MAP_FILE)
    results_cache = chains_cache(config, data, out, overwrite)
    results_cache.check(CHAINS_FILE, DIAGNOSTICS_FILE, FIGURES_FILE)
    out.mkdir(parents=True, exist_ok=True)
    timings["data_s"] = time.perf_counter() - t_start
    say(f"{len(data.train)} training simulations ({sum(d.n_halos for d in data.train)} halos), held out "
        f"{data.test.name} ({data.test.n_halos} halos); M_th = {data.mass_threshold:.3g} Msun/h "
        f"({data.mass_threshold / data.particle_mass:.0f} particles), grid {config.n_grid}^3")

    t0 = time.perf_counter()
    fit = map_fit(config, data, out, progress=progress, overwrite=overwrite)
    say(f"MAP: {'reused' if fit.reused else 'fitted'}, ln posterior {fit.log_posterior:.2f}")
    timings["map_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    neyrinck = neyrinck_fit(config, data, out, overwrite)
    scores = heldout_scores(data, fit.theta, neyrinck)
    timings["neyrinck_s"] = time.perf_counter() - t0
    say(f"held-out ln L: neural {scores['neural_test']:.2f}, Neyrinck {scores['neyrinck_test']:.2f}, difference "
        f"{scores['difference']:.2f} +- {scores['difference_standard_error']:.2f} nats")

    t0 = time.perf_counter()
    idata, sampler_info, reused = sample_chains(config, data, fit, out, progress=progress, overwrite=overwrite)
    timings["sampling_s"] = time.perf_counter() - t0
    import tfhalo.inference as inf

    convergence = inf.convergence_summary(idata)
    say(f"chains: {'reused' if reused else 'sampled'}; max R-hat {convergence['max_rhat']:.4f}, min bulk ESS "
        f"{convergence['min_ess_bulk']:.0f}, min tail ESS {convergence['min_ess_tail']:.0f}, "
        f"{convergence['n_divergent']} divergences")

    # The draw-level diagnostics and the figures depend on nothing but the cached
    # steps (the chains' key covers the data, the MAP's settings and the sampler's).
    t0 = time.perf_counter()
    samples = posterior_samples(idata)
    draws = results_cache.load(DIAGNOSTICS_FILE)
    if draws is None:
        draws = _draw_diagnostics(config, data, fit, samples)
        results_cache.save(DIAGNOSTICS_FILE, draws)
    timings["diagnostics_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figures = results_cache.load(FIGURES_FILE)
    if figures is None or not all((out / name).is_file() for name in figures.values()):
        figures = _figures(out, data, neyrinck, fit.theta, samples, idata, seed=config.chains_seed)
        results_cache.save(FIGURES_FILE, figures)
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    results = {
        "study": "neural_bias",
        "summary": [],
        "config": config.to_dict(),
        "seed": config.seed,
        "machine": common.machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "mass_threshold": data.mass_threshold,
            "threshold_particles": data.mass_threshold / data.particle_mass,
            "train_simulations": [d.name for d in data.train],
            "test_simulation": data.test.name,
            "n_halos_train": sum(d.n_halos for d in data.train),
            "n_halos_test": data.test.n_halos,
            "n_voxels_test": int(data.test.one_plus_delta.size),
            "n_parameters": int(fit.theta.size),
        },
        "map": {
            "theta": dict(zip(data.names, fit.theta.tolist())),
            "log_posterior": fit.log_posterior,
            "n_evaluations": fit.n_evaluations,
            # The local-linear chains sample the MAP's half-space of the NPE's radial
            # weights; the other half's best point and Laplace mass say what that leaves out.
            "other_half_space": fit.other_half,
        },
        "log_likelihood": scores,
        "heldout_log_predictive": draws["heldout_log_predictive"],
        "heldout_neural_posterior_mean_lnL": draws["posterior_mean_lnL"],
        "neyrinck": neyrinck.get_params(),
        "convergence": jsonable(convergence),
        "criteria": {"rhat_max": RHAT_MAX, "ess_min": ESS_MIN, "divergences": 0},
        "sampler": {"config": dataclasses.asdict(config.sampler_config()), **sampler_info,
                    **_sample_stat_summary(idata)},
        "component_shares": draws["component_shares"],
        "predictive_mass_function": draws["predictive_mass_function"],
        "figures": figures,
        "timings": timings,
    }
    results["summary"] = _summary_rows(results)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", report(results))
    say(f"wrote {out / 'results.json'} and {out / 'report.md'} in {timings['total_s']:.0f} s")
    return results


def _sample_stat_summary(idata) -> dict:
    stats = idata.sample_stats
    out = {}
    for name, key in (("acceptance_rate", "acceptance_rate"), ("step_size", "step_size"), ("n_steps", "n_steps")):
        if key in stats:
            out[f"mean_{name}"] = float(np.mean(stats[key].values))
    return out


def _draw_diagnostics(config: Config, data: StudyData, fit: MapFit, samples) -> dict:
    """Component shares, predicted mass function and held-out predictive density over thinned draws."""
    picks = np.linspace(0, samples.shape[0] - 1, min(DIAGNOSTIC_DRAWS, samples.shape[0])).astype(int)
    n_chains = samples.shape[1]
    like_sample, like_test = data.like_sample, data.like_test
    # Where each chain spends its time: the mixture components' shares of the
    # expected halo count (a share near 0: a vanished, prior-bounded component).
    shares = np.array([[like_sample.component_shares(samples[i, c]) for c in range(n_chains)]
                       for i in picks])  # (D, C, K)
    # The mass function the model predicts (Fig. 2's curves).
    predictive = np.array([[predictive_mass_function(like_test, samples[i, c]) for c in range(n_chains)]
                           for i in picks])  # (D, C, B * M)
    # ln p(held out | training) = ln E_posterior[L_test].
    post_test = np.array([[float(like_test.log_likelihood(samples[i, c])) for c in range(n_chains)]
                          for i in picks])  # (D, C)
    n_bins = len(DENSITY_QUANTILES) - 1
    pred_rhat = _rank_rhat(predictive)
    flat_shares = shares.reshape(-1, shares.shape[-1])
    return {
        "component_shares": {
            "map": like_sample.component_shares(fit.theta).tolist(),
            "posterior_mean": flat_shares.mean(axis=0).tolist(),
            "posterior_sd": flat_shares.std(axis=0, ddof=1).tolist(),
            "median_per_chain": np.median(shares, axis=0).tolist(),
            "fraction_of_draws_below_1_percent_per_chain": (shares < 0.01).mean(axis=0).tolist(),
            "rhat": _rank_rhat(shares).tolist() if config.n_components > 1 else None,
            "draws_per_chain": int(len(picks)),
        },
        "predictive_mass_function": {
            "draws_per_chain": int(len(picks)),
            "ln_mass_above_threshold": list(PREDICTIVE_LN_MASS_ABOVE_THRESHOLD),
            "density_quantiles": list(DENSITY_QUANTILES),
            "posterior_mean_ln_dn_dlnm": predictive.mean(axis=(0, 1)).reshape(n_bins, -1).tolist(),
            "rhat": pred_rhat.reshape(n_bins, -1).tolist(),
            "max_rhat": float(np.max(pred_rhat)),
        },
        "heldout_log_predictive": heldout_log_predictive(post_test),
        "posterior_mean_lnL": float(post_test.mean()),
    }


def _summary_rows(r) -> list:
    from tfhalo.studies.common import summary_row as _row

    ll = r["log_likelihood"]
    c = _convergence_numbers(r["convergence"])
    lpd = r["heldout_log_predictive"]
    shares = r["component_shares"]
    n_h = r["data"]["n_halos_test"]
    vox = "sqrt(N_vox) x std of per-voxel differences over the held-out grid (Vehtari et al. 2017)"
    rows = [
        _row("held-out ln L difference, neural - Neyrinck (nats)", ll["difference"],
             ll["difference_standard_error"], "standard error",
             note=f"at each model's maximum; {n_h} held-out halos; error: {vox}; the paper's ~2000 nats are for a "
                  "(250 Mpc/h)^3 volume"),
        _row("held-out ln L difference per halo (nats)", ll["difference_per_halo"],
             ll["difference_per_halo_standard_error"], "standard error", note="the difference / N_halos"),
        _row("held-out ln L, neural bias at MAP", ll["neural_test"]),
        _row("held-out ln L, Neyrinck at ML", ll["neyrinck_test"]),
        _row("held-out log predictive density ln E_post[L_test]", lpd["all_chains"],
             lpd["between_chain_standard_error"],
             "MCSE (between chains)" if lpd["between_chain_standard_error"] is not None else None,
             note=f"{lpd['draws_per_chain']} draws per chain"),
        _row("max rank-normalised split R-hat", c["max_rhat"], note=f"criterion < {RHAT_MAX}"),
        _row("min bulk ESS", c["min_ess_bulk"], note=f"criterion >= {ESS_MIN:.0f}"),
        _row("min tail ESS", c["min_ess_tail"], note=f"criterion >= {ESS_MIN:.0f}"),
        _row("divergent transitions", c["n_divergent"], note="criterion 0"),
        _row("predicted mass function max R-hat", r["predictive_mass_function"]["max_rhat"],
             note="over density bins and masses (Fig. 2's curves)"),
    ]
    check = r["sampler"].get("precision_check")
    if check:
        rows.append(_row(f"{check['dtype']} chains: importance efficiency of p_64 / p_32", check["importance_efficiency"],
                         note=f"criterion >= {PRECISION_EFFICIENCY_MIN}; sd of ln p_64 - ln p_32 "
                              f"{check['sd_nats']:.2g} nats at {check['n_draws']} draws"))
    for k, (mean, sd) in enumerate(zip(shares["posterior_mean"], shares["posterior_sd"])):
        rows.append(_row(f"component {k + 1} share of expected halos", mean, sd, "posterior sd",
                         note=f"MAP {shares['map'][k]:.3f}"))
    return rows


def _convergence_numbers(c) -> dict:
    """The convergence summary as read back from results.json: a diagnostic that could not be
    computed (written as null, e.g. R-hat of chains that never moved) becomes NaN, which fails
    every criterion."""
    return {k: (math.nan if v is None else v) for k, v in c.items()}


def _convergence_failures(c) -> list:
    failures = []
    if not c["max_rhat"] < RHAT_MAX:
        failures.append(f"R-hat: max {c['max_rhat']:.4f} (need < {RHAT_MAX})")
    if not c["min_ess_bulk"] >= ESS_MIN:
        failures.append(f"bulk ESS: min {c['min_ess_bulk']:.0f} (need >= {ESS_MIN:.0f})")
    if not c["min_ess_tail"] >= ESS_MIN:
        failures.append(f"tail ESS: min {c['min_ess_tail']:.0f} (need >= {ESS_MIN:.0f})")
    if c["n_divergent"] > 0:
        failures.append(f"divergences: {c['n_divergent']} (need 0)")
    return failures


def _precision_lines(check) -> list:
    if not check:
        return []
    verdict = ("so the two posteriors agree" if check["matches"] else
               f"**WARNING: below {PRECISION_EFFICIENCY_MIN}: the {check['dtype']} posterior differs from the "
               "float64 one**; rerun with `chains_dtype=\"float64\"`")
    return [f"The chains evaluated the likelihood in {check['dtype']}. At {check['n_draws']} of their draws "
            f"`ln p_64 - ln p_{check['dtype'][-2:]}` has a standard deviation of {check['sd_nats']:.2g} nats "
            f"(range {check['range_nats']:.2g}); the importance weights `p_64 / p_{check['dtype'][-2:]}` have an "
            f"efficiency of {check['importance_efficiency']:.4f}, {verdict}.", ""]


def report(r: dict) -> str:
    """``report.md`` of a results dict written by :func:`run`."""
    from tfhalo.inference.config import KERNEL_NAMES

    cfg = r["config"]
    d = r["data"]
    ll = r["log_likelihood"]
    c = _convergence_numbers(r["convergence"])
    lpd = r["heldout_log_predictive"]
    s = r["sampler"]
    failures = _convergence_failures(c)
    n_trans = c["n_draws"] * c["n_chains"]
    lines = [
        "# Neural bias model (Charnock et al. 2020) vs Neyrinck et al. (2014)",
        "",
        f"Preset `{cfg['name']}`, seed {r['seed']}: mixture-density head with {cfg['n_components']} Gaussian"
        f"{'s' if cfg['n_components'] > 1 else ''} ({d['n_parameters']} parameters; the paper's model has "
        f"2 Gaussians, 17 parameters), input field `{cfg['field']}` (chains sampled with "
        f"`{cfg['sample_field'] or cfg['field']}`), grid {cfg['n_grid']}^3, M_th = {d['mass_threshold']:.3g} Msun/h "
        f"({d['threshold_particles']:.0f} particles). Trained on {', '.join(d['train_simulations'])} "
        f"({d['n_halos_train']} halos); held out {d['test_simulation']} ({d['n_halos_test']} halos).",
        "",
        "## Convergence",
        "",
        (f"**Converged**: rank-normalised split R-hat < {RHAT_MAX}, bulk and tail ESS >= {ESS_MIN:.0f} for every "
         "parameter, and no divergent transitions." if not failures else
         "**WARNING: the chains have NOT converged** by the criteria (split R-hat < "
         f"{RHAT_MAX}, bulk and tail ESS >= {ESS_MIN:.0f}, no divergences). Failed: " + "; ".join(failures)
         + ". Read the posterior summaries below with caution."),
        "",
        f"{c['n_chains']} chains"
        + (f" in {groups} groups of {c['n_chains'] // groups} ("
           + ("one warm-up of all chains" if s['config'].get('pool_warmup', False) else "each with its own warm-up")
           + ")" if (groups := int(s['config'].get('chain_groups', 1))) > 1 else "")
        + f", {KERNEL_NAMES.get(s['config']['kernel'], s['config']['kernel'])}, {s['config']['num_warmup']} warm-up + "
        f"{c['n_draws']} draws each, target acceptance {s['config']['target_accept']}"
        + (f", kept draws at {scale:g} of the adapted step" if (scale := float(s['config'].get('step_scale', 1.0)))
           != 1.0 else "") + ", in the local-linear "
        + (f"coordinates preconditioned by the covariance of a pilot run of {r['config']['n_pilot']} + "
           f"{r['config']['n_pilot']} iterations"
           + (f" at target acceptance {pilot:g}" if (pilot := r['config'].get('pilot_target_accept')) is not None
              and pilot != s['config']['target_accept'] else "")
           + " (itself preconditioned by the MAP Hessian)"
           if r['config'].get('n_pilot') else "coordinates preconditioned by the MAP Hessian")
        + f" (sampler seed {s['config']['seed']}); pilot included in the time: max R-hat "
        f"{c['max_rhat']:.4f}, min bulk ESS {c['min_ess_bulk']:.0f}, min tail ESS {c['min_ess_tail']:.0f}, "
        f"{c['n_divergent']} divergences of {n_trans} transitions; {s['seconds']:.0f} s"
        + (f", mean acceptance {s['mean_acceptance_rate']:.3f}" if "mean_acceptance_rate" in s else "")
        + (f", mean step size {s['mean_step_size']:.3g}" if "mean_step_size" in s else "") + ".",
        "",
        *_precision_lines(s.get("precision_check")),
        "## Log-likelihood at the maxima (Poisson point process, paper eq. 16)",
        "",
        "| model | params | train ln L | held-out ln L |",
        "|---|---|---|---|",
        f"| neural bias (MAP) | {d['n_parameters']} | {ll['neural_train']:.2f} | {ll['neural_test']:.2f} |",
        f"| Neyrinck x global mass function (ML) | 4 + {3 * r['neyrinck']['n_components'] - 1} | "
        f"{ll['neyrinck_train']:.2f} | {ll['neyrinck_test']:.2f} |",
        "",
        f"Held-out difference (neural - Neyrinck): **{ll['difference']:.2f} +- "
        f"{ll['difference_standard_error']:.2f} nats** ({ll['difference_per_halo']:.4f} +- "
        f"{ll['difference_per_halo_standard_error']:.4f} per halo). The standard error treats the "
        f"{ll['n_voxels']} held-out voxels as independent units: each voxel's term holds its halos' ln n and minus "
        "its expected count (given the density, voxel counts are independent Poisson variables), and the error is "
        "sqrt(N_vox) times the standard deviation of the per-voxel differences (Vehtari, Gelman & Gabry 2017, "
        "arXiv:1507.04544). The paper reports ~2000 nats for its (250 Mpc/h)^3 volume.",
        "",
        f"Held-out log predictive density ln E_posterior[L_test] = **{lpd['all_chains']:.2f}**"
        + (f" +- {lpd['between_chain_standard_error']:.2f} (between-chain standard error)"
           if lpd["between_chain_standard_error"] is not None else "")
        + f", {lpd['all_chains'] - ll['neyrinck_test']:+.2f} nats over Neyrinck at its maximum; per chain: "
        + ", ".join(f"{x:.2f}" for x in lpd["per_chain"]) + f" ({lpd['draws_per_chain']} draws per chain). "
        f"Posterior-mean held-out ln L: {r['heldout_neural_posterior_mean_lnL']:.2f}.",
    ]
    other = r["map"]["other_half_space"]
    if other:
        lines += [
            "",
            "The chains sample the half-space of the NPE's radial weights that holds the MAP (psi rising or "
            "falling with density). The best point of the other half (fit_map starts an optimiser from the "
            f"reflected MAP) is {other['log_posterior_below_map']:.2f} nats lower in ln posterior; its Laplace mass "
            f"relative to the MAP's half is e^{other['log_laplace_mass_ratio']:.1f}"
            + (", so the chains leave out a non-negligible part of the posterior: read them as conditional on the "
               "sign of psi's slope." if other["log_laplace_mass_ratio"] > math.log(0.01) else "."),
        ]
    shares = r["component_shares"]
    pmf = r["predictive_mass_function"]
    lines += [
        "",
        "## Mixture components and predictions",
        "",
        "Share of the expected halo count per mixture component: MAP ("
        + ", ".join(f"{x:.3f}" for x in shares["map"]) + "), posterior mean +- sd ("
        + ", ".join(f"{m:.3f} +- {sd:.3f}" for m, sd in zip(shares["posterior_mean"], shares["posterior_sd"]))
        + "); per chain, median over draws: "
        + "; ".join("(" + ", ".join(f"{x:.3f}" for x in ch) + ")" for ch in shares["median_per_chain"])
        + ". Fraction of draws where a component's share is below 1% (it has vanished and its other parameters "
        "are bounded only by the prior): "
        + "; ".join("(" + ", ".join(f"{x:.2f}" for x in ch) + ")"
                    for ch in shares["fraction_of_draws_below_1_percent_per_chain"]) + "."
        + (" R-hat of the shares: " + ", ".join(f"{x:.3f}" for x in shares["rhat"]) + "."
           if shares.get("rhat") else ""),
        "",
        "Predicted mass function (Fig. 2's curves: ln of dn/dln M averaged over the held-out voxels of each density "
        "bin, at ln M - ln M_th = " + ", ".join(f"{x:g}" for x in pmf["ln_mass_above_threshold"])
        + f", {pmf['draws_per_chain']} draws per chain): max R-hat {pmf['max_rhat']:.3f} over bins and masses.",
        "",
        "## Parameters",
        "",
        "| parameter | MAP | mean | sd | R-hat | bulk ESS | tail ESS |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, p in c.get("parameters", {}).items():
        # ArviZ labels the entries of theta "theta[<parameter name>]".
        name = label[len("theta["):-1] if label.startswith("theta[") and label.endswith("]") else label
        lines.append(f"| {name} | {r['map']['theta'].get(name, float('nan')):.4g} | {_get(p, 'mean'):.4g} | "
                     f"{_get(p, 'sd'):.3g} | {_get(p, 'r_hat', 'rhat'):.4f} | {_get(p, 'ess_bulk'):.0f} | "
                     f"{_get(p, 'ess_tail'):.0f} |")
    lines += [
        "",
        f"Total wall time {r['timings']['total_s']:.0f} s on {r['machine']}.",
        "",
        "Figures: `fig2_mass_function.png` (n(M | delta) in density bins of the held-out simulation, catalogue "
        "vs model with 68% posterior band, and Neyrinck), `fig3_traces.png` (ArviZ trace plot of every parameter), "
        "`fig4_slices.png` (density, psi, expected halo counts, halo mass field). Chains, sample statistics and the "
        "MAP: `posterior.nc` (ArviZ InferenceData, NetCDF).",
        "",
    ]
    return "\n".join(lines)


def _get(d, *keys):
    for k in keys:
        if k in d and d[k] is not None:
            return float(d[k])
    return float("nan")


# -- figures -----------------------------------------------------------------------------------------------------


def _figures(out: Path, data: StudyData, neyrinck, theta_map, samples, idata, seed: int) -> dict:
    import arviz as az
    import matplotlib.pyplot as plt

    from tfhalo.evaluation.plots import save_figure

    test, like_test = data.test, data.like_test
    flat = samples.reshape(-1, samples.shape[-1])
    draws = flat[np.random.default_rng(seed + 2).choice(len(flat), size=min(40, len(flat)), replace=False)]

    # Fig. 2: n(M | delta) in density bins of the held-out simulation.
    lmt = test.log_mass_threshold
    ln_m = np.linspace(lmt, lmt + 4.5, 60)
    bins, edges = _density_bins(test)
    curves = np.stack([_dn_dlnm(like_test, t, ln_m) for t in draws])  # (D, V, M)
    best = _dn_dlnm(like_test, theta_map, ln_m)
    n_bins = len(DENSITY_QUANTILES) - 1
    fig, axes = plt.subplots(1, n_bins, figsize=(4 * n_bins, 4), sharey=True)
    hbins = np.linspace(lmt, lmt + 4.5, 10)
    centres, width = 0.5 * (hbins[1:] + hbins[:-1]), np.diff(hbins)
    halo_bin = bins[test.halo_voxel]
    rho = test.one_plus_delta.ravel()
    for b, ax in enumerate(axes):
        sel = bins == b
        vol = sel.sum() * test.voxel_volume
        counts, _ = np.histogram(test.halo_ln_mass[halo_bin == b], hbins)
        y = counts / vol / width
        ax.errorbar(np.exp(centres), np.where(y > 0, y, np.nan), yerr=np.sqrt(counts) / vol / width, fmt="ko",
                    ms=4, label="catalogue (held out)")
        lo, hi = np.percentile(curves[:, sel].mean(axis=1), [16, 84], axis=0)
        ax.fill_between(np.exp(ln_m), lo, hi, color="C0", alpha=0.4, label="neural bias 68%")
        ax.plot(np.exp(ln_m), best[sel].mean(axis=0), "C0-", label="neural bias MAP")
        ney_rate = neyrinck.rate(rho[sel]).mean()
        ax.plot(np.exp(ln_m), ney_rate / test.voxel_volume * np.exp(neyrinck.log_mass_pdf(ln_m) + ln_m), "C3--",
                label="Neyrinck")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$M$ [$M_\odot/h$]")
        ax.set_title(f"ln(1+δ) ∈ [{edges[b]:.2f}, {edges[b + 1]:.2f}]")
    axes[0].set_ylabel(r"$dn/d\ln M$ [$(h^{-1}$Mpc$)^{-3}$]")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "fig2_mass_function.png", dpi=100)

    # Fig. 3: ArviZ trace plot of every parameter.
    p = samples.shape[-1]
    axes = az.plot_trace(idata, var_names=["theta"], compact=False, figsize=(14, 1.6 * p),
                         plot_kwargs={"linewidth": 0.6}, trace_kwargs={"linewidth": 0.3})
    fig = np.asarray(axes).ravel()[0].figure
    fig.tight_layout()
    save_figure(fig, out / "fig3_traces.png", dpi=80)

    # Fig. 4: slices of density, psi, expected counts and halo mass field.
    fields = like_test.per_voxel(theta_map)
    k = test.n_grid // 2
    panels = [(np.log(test.one_plus_delta)[:, :, k], "ln(1+δ)"), (fields["psi"][:, :, k, 0], "NPE ψ"),
              (fields["expected"].reshape((test.n_grid,) * 3)[:, :, k], "expected halos / voxel"),
              (np.log10(1 + test.halo_mass_field()[:, :, k]), "log10(1 + halo mass)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (img, title) in zip(axes, panels):
        im = ax.imshow(img.T, origin="lower", cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, out / "fig4_slices.png", dpi=100)
    return {"Fig. 2: n(M | density) of the held-out simulation, catalogue vs models": "fig2_mass_function.png",
            "Traces of every parameter (ArviZ)": "fig3_traces.png",
            "Slices: density, NPE psi, expected halos, halo mass": "fig4_slices.png"}
