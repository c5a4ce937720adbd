"""The field-level study: initial conditions sampled jointly with the neural bias model.

Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural
physical engines for inferring the halo mass distribution function", MNRAS
494, 50, arXiv:1909.06379, sections 4-5 and Figs. 4-6: the neural bias model
(:mod:`tfhalo.bias`) is the likelihood of a BORG-like inference (Jasche &
Wandelt 2013, MNRAS 432, 894, arXiv:1203.3639).  The white noise ``omega`` of
the initial conditions (``n^3`` numbers, prior N(0, I)) and the 17 bias
parameters (prior N(0, 10^2)) are sampled together by HMC
(:mod:`tfhalo.inference`) through the differentiable 2LPT forward model
(:class:`tfhalo.field.forward.LPTForwardModel`) and the Poisson likelihood of
the paper's eq. 16 (:class:`tfhalo.field.posterior.FieldLevelPosterior`).

Steps, each cached and resumable (rerun the same call after an interruption):

1. one N-body simulation (:func:`tfhalo.studies.common.ensure_suite`); the
   truth is its white noise Fourier-truncated to the inference grid
   (:func:`truth_white_noise`), the data its FoF halos above the threshold;
2. the bias parameters fitted to the N-body density on the inference grid
   (:func:`tfhalo.bias.fit.fit_map`), as the paper does;
3. for each setting, chains of the joint posterior:

   * ``"mock"``: a catalogue drawn from the model itself (eq. 16's Poisson
     process given the LPT field of the true white noise and the fitted bias
     parameters): the posterior is then exactly right, so the coverage of the
     true Fourier coefficients must be nominal;
   * ``"nbody"``: the N-body halos, where coverage measures how well LPT plus
     the neural bias describe real halos;
   * ``"mock_fixed_bias"``: the mock's catalogue with the bias held at the
     values it was drawn with, the white noise sampled alone (BORG's field
     step): the true white noise is then a draw from this posterior too, so
     its coverage tests the likelihood, its gradient, the Jacobian and the
     field sampler without the slow bias directions of the joint chains;

4. power spectra (Fig. 6), slices (Figs. 4-5), the cross-correlation ``r(k)``
   with the truth, coverage per ``|k|`` range, diagnostics, and a report.

The chains run in Hartley (real Fourier) coordinates of ``omega`` scaled per
``|k|`` shell by the target's curvature
(:class:`tfhalo.field.precondition.FourierPreconditioner`), with the sampler's
diagonal mass-matrix adaptation on top, so every Fourier mode moves on its own
posterior scale: the data constrain large scales far more than small ones.

Example:
    >>> from tfhalo.studies import field_level
    >>> cfg = field_level.Config.preset("quick", seed=0)
    >>> results = field_level.run(cfg, suite="runs/demo/field_suite", out="runs/demo/field_level")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import math
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from tfhalo.atomic import atomic_path, write_json_atomic, write_text_atomic
from tfhalo.evaluation.report import jsonable
from tfhalo.validation import check_bool, check_choice, check_float, check_fraction, check_int

__all__ = ["Config", "PRESETS", "QUICK_SAMPLER", "JOINT_SAMPLER", "SETTINGS", "run", "truth_white_noise",
           "linear_fields", "bias_spread",
           "sample_bias_given_fields", "bias_given_fields_target", "coverage_z", "coverage_from_samples",
           "bias_identification", "bias_metric_from_draws", "bias_model", "forward_model", "FinishedStudy",
           "load_finished_study", "local_linear_bias_bijector", "report"]

SETTINGS = ("mock", "nbody", "mock_fixed_bias")
#: Settings whose bias parameters are held at the values the mock catalogue was drawn with.
FIXED_BIAS_SETTINGS = ("mock_fixed_bias",)
# The settings a fixed-bias setting's chains do not read (they run the joint sampler's HMC on the white noise
# alone, whatever ``sampler`` says): its cache key holds their defaults whatever they are, so that changing
# them keeps its results and a key written before this held the same.
FIXED_BIAS_UNUSED = frozenset({"sampler", "bias_kernel", "bias_steps", "bias_carry", "bias_min_step_factor",
                               "bias_coordinates", "bias_metric", "field_metric", "metric_windows",
                               "bias_scale_coordinate", "n_bias_pilot"})
#: Settings whose catalogue is drawn from the model with the bias fitted to the N-body field, the mock's truth.
MOCK_SETTINGS = ("mock", "mock_fixed_bias")
#: A bias parameter whose posterior keeps more than this share of its prior variance (contraction below
#: ``1 - WEAK_CONTRACTION``) is reported as weakly identified by the catalogue.
WEAK_CONTRACTION = 0.5
SETTING_TITLES = {
    "mock": "Self-consistent mock (catalogue drawn from the model)",
    "nbody": "N-body catalogue",
    "mock_fixed_bias": "Self-consistent mock, bias parameters known (the white noise sampled alone)",
}
STARTS = ("prior", "map")
PRECONDITIONERS = ("curvature", "prior", "none")
BIAS_COORDINATES = ("local_linear", "diagonal", "pilot")
SAMPLERS = ("joint", "gibbs")
#: The forward model's arithmetic inside the chains (``Config.forward_dtype``).
FORWARD_DTYPES = ("float64", "float32")
BIAS_KERNELS = ("slice", "nuts", "hmc")
#: How the bias follows the field's move in the blocked sampler: held fixed ("none"), or carried so that
#: the NPE's pre-activation keeps its mean and variance over the voxels (:class:`tfhalo.field.carry.NPEMomentCarry`).
BIAS_CARRIES = ("none", "npe_moments")
#: The bias block's metric with ``sampler="gibbs"``: the local-linear coordinates' Laplace map at the chains'
#: start (``"start"``), or a dense metric re-estimated from the chains' own bias draws over the first half of the
#: warm-up (``"warmup"``; :func:`bias_metric_from_draws`).
BIAS_METRICS = ("start", "warmup")
#: The field block's Fourier scales with ``sampler="gibbs"``: the curvature widths at the chains' start
#: (``"start"``), or those widths rescaled per ``|k|`` shell by the spread of the chains' own white-noise draws over
#: the first half of the warm-up (``"warmup"``; :func:`tfhalo.field.precondition.scales_from_draws`).
FIELD_METRICS = ("start", "warmup")
#: The local-linear bias coordinates' choices for the NPE's radial scale: those of
#: :class:`tfhalo.bias.reparam.LocalLinearReparametrization` (its ``SCALE_COORDINATES``), named here so that
#: a Config is checked without importing Keras.
BIAS_SCALE_COORDINATES = ("curvature", "log_scale")
#: Fewest warm-up sweeps with ``bias_metric="warmup"`` or ``field_metric="warmup"``: each quarter (the first
#: stage's step adaptation and its draws) needs at least 4.  The sampler's own minimum (20, or none without
#: warm-up) is larger, so in practice this refuses ``n_warmup=0`` with a message naming the metric.
MIN_WARMUP_FOR_WARMUP_METRIC = 16
#: Most warm-up metric windows (``metric_windows``): the first needs a 2^-W share of the warm-up's first half.
MAX_METRIC_WINDOWS = 8
#: Fewest warm-up iterations (and draws) of the bias pilot (``bias_coordinates="pilot"``).
MIN_BIAS_PILOT = 50
#: NUTS settings of the bias block (``bias_kernel="nuts"``) and of the bias pilot.
BIAS_TREE_DEPTH = 8
BIAS_TARGET_ACCEPT = 0.9
#: Leapfrog steps of the bias block's HMC (``bias_kernel="hmc"``): NUTS's trees on the bias
#: given a field run to 121 steps per iteration at the 5e11 threshold (docs/field_level.md).
BIAS_LEAPFROG_STEPS = 40
LEVELS = (0.68, 0.95)
# A bin's coverage passes when it is within this many binomial standard errors of what an
# exact sampler's intervals from these draws hold (tfhalo.field.analysis.expected_coverage,
# which tends to the nominal level as the draws grow); with 2 levels x ~8 bins, 3 sigma keeps
# the chance of a false alarm for a calibrated posterior near 4%.
COVERAGE_Z_MAX = 3.0
# The posterior's mean power passes in a bin when it lies within this many
# cosmic-variance standard deviations of the prior's.
POWER_SIGMA_MAX = 2.0
N_LOW_K_BINS = 3
SAMPLES_FILE = "samples.h5"
POSTERIOR_FILE = "posterior.nc"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the field-level study; every field is checked on construction.

    Args:
        name: preset the settings came from.
        seed: seed of the simulation, the bias fit and the mock catalogue.
        sampler_seed: seed of the chains' starts and transitions (default ``seed``).
        sim_preset: :data:`tfhalo.sim.PRESETS` name of the N-body run.
        n_side: particles per side (overrides the preset; None keeps it).
        box_size: box side in Mpc/h (overrides the preset; None keeps it).
        n_grid: inference grid per side; must divide ``n_side``.
        threshold_mass: halo mass threshold, Msun/h.
        order: LPT order of the forward model (1 or 2).
        particle_factor: LPT particles per voxel per side (:class:`~tfhalo.field.forward.LPTForwardModel`);
            2 puts 8 particles in a voxel, which keeps ``log(1 + delta)`` of nearly empty
            voxels, and so the posterior, from becoming stiff.
        forward_dtype: arithmetic of the forward model inside the chains: ``"float64"``, or
            ``"float32"`` (its gradient about 1.5 times faster than float64's on a 2-core CPU:
            its FFTs and cloud-in-cell sums; ``benchmarks/bench_forward.py``).  The chains' states, the
            bias model and the likelihood stay float64; the mock catalogues are drawn with
            the float64 model either way, so both choices see the same data.
        n_components: Gaussians of the neural bias model's mixture-density head.  2, the
            default, is Charnock et al.'s model (17 parameters); 1 gives an 11-parameter model
            with one Gaussian in ln M per voxel, whose posterior lacks the two-component head's
            weakly identified directions (see docs/field_level.md, "Known limitations").  The
            mock catalogue is drawn from the model with this head.
        map_steps, map_starts: Adam steps and starts of the bias fit to the N-body field.
        settings: which of ``"mock"``, ``"nbody"`` and ``"mock_fixed_bias"`` to run.
        start: chains start from a ``"prior"`` draw of the white noise, or from a
            ``"map"`` of it found by ``map_field_steps`` Adam steps from that draw.
        map_field_steps: Adam steps of the field MAP (``start="map"``).
        preconditioner: ``"curvature"`` (per-shell Fourier scales from the target's
            curvature), ``"prior"`` (Hartley coordinates, unit scales) or ``"none"``
            (plain ``omega``).
        bias_coordinates: sampling coordinates of the bias parameters: ``"diagonal"`` (the
            conditional widths at the start) or ``"local_linear"``
            (:class:`~tfhalo.bias.reparam.LocalLinearReparametrization` on the start's LPT density,
            then its Laplace map: the neural bias study's coordinates, in which the bias posterior
            given a field is nearly Gaussian; the bias then mixes faster, the low-k power no faster),
            or ``"pilot"`` (the local-linear map, then a dense metric: the regularised covariance of
            NUTS draws of the bias given each chain's starting field; :func:`_pilot_bias_bijector`).
        sampler: ``"joint"`` (one HMC kernel on the white noise and the bias together,
            with windowed step-size and mass-matrix adaptation) or ``"gibbs"`` (each sweep
            moves the white noise by HMC given the bias, then the bias by ``bias_steps``
            transitions of ``bias_kernel`` given the field, as BORG alternates
            them; :class:`~tfhalo.inference.GibbsKernel`).  The bias block then reuses
            the sweep's LPT density and runs no forward model (the slice sampler needs no
            gradient; NUTS takes gradients of the bias model only, which the reported
            gradient evaluations, those of the forward model, leave out).
        bias_kernel: the bias block's kernel with ``sampler="gibbs"``: ``"slice"`` (TFP's
            hit-and-run ``SliceSampler``, Neal 2003), ``"nuts"`` (``NoUTurnSampler``, trees
            up to depth :data:`BIAS_TREE_DEPTH`; Hoffman & Gelman 2014, arXiv:1111.4246) or
            ``"hmc"`` (:data:`BIAS_LEAPFROG_STEPS` leapfrog steps).  NUTS and HMC adapt their
            step size by dual averaging to acceptance :data:`BIAS_TARGET_ACCEPT` over the first
            80% of the warm-up, and follow the bias posterior's long curved directions given
            the field, which hit-and-run crosses by a random walk.
        bias_steps: transitions of the bias kernel per sweep (``sampler="gibbs"``).
        bias_min_step_factor: in ``(0, 1]``; below 1, each transition of the ``"hmc"`` or
            ``"nuts"`` bias kernel uses the adapted step times a factor drawn log-uniformly
            from ``[bias_min_step_factor, 1]`` per chain (:class:`~tfhalo.inference.JitteredStepSize`):
            exact, and a chain whose bias reaches a region stiffer than the adapted step
            allows (where every trajectory diverges) still moves.  1 (the default) draws no factor.
        bias_carry: ``"none"`` (the field moves with the bias held fixed) or ``"npe_moments"``
            (``sampler="gibbs"``: the field's move carries the bias so that the NPE's
            pre-activation keeps its mean and variance over the voxels, an exact
            non-centred move, :class:`~tfhalo.field.carry.NPEMomentCarry`).
        bias_metric: ``"start"`` (the bias coordinates as built at the chains' start) or
            ``"warmup"`` (``sampler="gibbs"`` with ``bias_coordinates="local_linear"``: the first half
            of the warm-up runs the blocked chains in those coordinates, and the regularised
            covariance of their bias draws in them (shrunk towards the start's widths) becomes the bias
            block's dense metric for the rest of the warm-up and the kept sweeps; the metric is fixed
            before the kept sweeps, so they stay exact; :func:`bias_metric_from_draws`).  Given the
            fields the chains visit, the bias spreads along combinations of its parameters tens of
            times wider than the start's curvature widths, which the start's Laplace map cannot know.
            Needs ``n_warmup`` of at least :data:`MIN_WARMUP_FOR_WARMUP_METRIC`.
        field_metric: ``"start"`` (the field's Fourier scales from the target's curvature at the
            chains' start) or ``"warmup"`` (``sampler="gibbs"`` with a preconditioner: the same first
            half of the warm-up as ``bias_metric="warmup"``, whose white-noise draws' spread per ``|k|``
            shell rescales those scales for the rest of the warm-up and the kept sweeps,
            :func:`tfhalo.field.precondition.scales_from_draws`; fixed before the kept sweeps).  The
            curvature at the start (a field MAP) need not be the width where the chains go, and the
            largest scales, with few modes, are where a wrong width costs most.  Needs ``n_warmup`` of at
            least :data:`MIN_WARMUP_FOR_WARMUP_METRIC`.
        metric_windows: in how many windows the first half of the warm-up re-estimates the warm-up
            metrics (``bias_metric`` or ``field_metric`` ``"warmup"``), each twice as long as the one
            before and each starting from the last one's metrics and state, as Stan's windowed
            adaptation does (:func:`_warmup_stages`).  Draws in poor coordinates understate the spread of
            the directions they cross slowly (the field's lowest ``|k|`` shells); a later window, in
            better ones, sees more of it.  Needs ``n_warmup`` of at least
            ``MIN_WARMUP_FOR_WARMUP_METRIC * (2 ** metric_windows - 1)``.  One by default: at a
            300-sweep warm-up two windows gave closer scales but slower chains on three simulations,
            their last window keeping a third fewer draws (docs/field_level.md, "Known limitations").
        bias_scale_coordinate: what the local-linear bias coordinates (``bias_coordinates``
            ``"local_linear"`` or ``"pilot"``) hold for the NPE's radial scale:
            ``"curvature"`` (the default), the log curvature scale ``xi`` of ``psi``, or
            ``"log_scale"``, the log scale ``lambda = xi + softplus(m)`` of the radial weights
            (:data:`BIAS_SCALE_COORDINATES`).  Given a field, the bias posterior
            reaches into softplus's linear regime (``m`` large), where the data leave the
            curvature free and ``xi`` falls with ``m`` while ``lambda`` stays put; there the
            curvature coordinate bends the posterior into a ridge (docs/sampling_coordinates.md,
            "Which scale coordinate").
        n_bias_pilot: warm-up iterations and draws per chain of the bias pilot
            (``bias_coordinates="pilot"``; at least :data:`MIN_BIAS_PILOT`).
        n_probes: Hutchinson probes of the curvature estimate.
        n_chains, n_warmup, n_samples, leapfrog_steps, target_accept: HMC settings (of the
            field block with ``sampler="gibbs"``, whose step size adapts by dual averaging
            over the first 80% of the warm-up sweeps).
        n_bins: ``|k|`` bins (default: width ``2 pi / L``).
        thin: every ``thin``-th draw of the white noise is saved.
        n_field_draws: draws pushed through the forward model for the final-density and
            ``psi`` maps.
        jit_compile: XLA for the chains.
        devices: JAX devices the chains are split over (``n_chains`` must be a
            multiple); sharding does not change the chains, so it is not part of
            the cache keys.
        keep_checkpoint: keep each setting's chain checkpoint (``<setting>/checkpoint/``) after
            it finishes, so that a rerun with a larger ``n_samples`` (or another ``thin``,
            ``n_field_draws`` or ``n_bins``) extends the chains and redoes the analysis instead
            of being refused as stale (the blocks hold every draw: 8 bytes x chains x
            parameters per sweep).  Not part of the cache keys.
        workers: how many settings run at once, each in a process of its own with the
            machine's cores shared among them (:func:`tfhalo.studies.common.map_in_processes`);
            1 runs them one after another in this process.  A 16^3 grid's sweep gains little
            from a second thread, so on 2 cores two settings at once take about as long as
            one.  Not part of the cache keys: a setting's chains are the same either way, up
            to the rounding of its thread count.
        keep_field_draws: keep every draw of the white noise in memory and in the
            checkpoint (``True``), or only every ``thin``-th, with its mean over all draws
            and each draw's binned linear power (``False``: a
            :class:`~tfhalo.inference.DrawReduction`; 64^3 x 4 chains x 4,000 draws is
            33 GB in float64).  The analysis is the same either way (it uses the thinned
            draws, the mean and the per-draw power), but without every draw ``thin`` and
            ``n_bins`` fix what the chains keep, so changing them is no longer an extension.
    """

    name: str = "custom"
    seed: int = 0
    sampler_seed: Optional[int] = None
    sim_preset: str = "quick"
    n_side: Optional[int] = 128
    box_size: Optional[float] = 64.0
    n_grid: int = 16
    threshold_mass: float = 2e12
    order: int = 2
    particle_factor: int = 2
    forward_dtype: str = "float64"
    n_components: int = 2
    map_steps: int = 600
    map_starts: int = 2
    settings: Tuple[str, ...] = SETTINGS
    start: str = "map"
    map_field_steps: int = 200
    preconditioner: str = "curvature"
    bias_coordinates: str = "diagonal"
    sampler: str = "joint"
    bias_kernel: str = "slice"
    bias_steps: int = 10
    bias_carry: str = "none"
    bias_min_step_factor: float = 1.0
    bias_metric: str = "start"
    field_metric: str = "start"
    metric_windows: int = 1
    bias_scale_coordinate: str = "curvature"
    n_bias_pilot: int = 300
    n_probes: int = 8
    n_chains: int = 2
    n_warmup: int = 150
    n_samples: int = 300
    leapfrog_steps: int = 20
    target_accept: float = 0.75
    n_bins: Optional[int] = None
    thin: int = 5
    n_field_draws: int = 24
    jit_compile: bool = True
    devices: int = 1
    keep_checkpoint: bool = False
    keep_field_draws: bool = True
    workers: int = 1

    def __post_init__(self):
        from tfhalo.studies.common import check_config_header, check_sampler_settings

        def set_(field, value):
            object.__setattr__(self, field, value)

        check_config_header(self)
        if self.n_side is not None:
            set_("n_side", check_int("n_side", self.n_side, minimum=4))
        if self.box_size is not None:
            set_("box_size", check_float("box_size", self.box_size, positive=True))
        set_("n_grid", check_int("n_grid", self.n_grid, minimum=4))
        n_side = self.sim_params().n_side
        if n_side % self.n_grid:
            raise ValueError(f"n_grid must divide the simulation's n_side ({n_side}). Received: n_grid={self.n_grid}")
        set_("threshold_mass", check_float("threshold_mass", self.threshold_mass, positive=True))
        set_("order", check_int("order", self.order, minimum=1, maximum=2))
        set_("particle_factor", check_int("particle_factor", self.particle_factor, minimum=1, maximum=4))
        if self.particle_factor > 1 and self.n_grid % 2:
            raise ValueError(f"n_grid must be even when particle_factor > 1. Received: n_grid={self.n_grid}")
        check_choice("forward_dtype", self.forward_dtype, FORWARD_DTYPES)
        set_("n_components", check_int("n_components", self.n_components, minimum=1))
        set_("map_steps", check_int("map_steps", self.map_steps, minimum=1))
        set_("map_starts", check_int("map_starts", self.map_starts, minimum=1))
        settings = tuple(self.settings) if isinstance(self.settings, (list, tuple)) else (self.settings,)
        if not settings or len(set(settings)) != len(settings):
            raise ValueError(f"settings must be distinct names from {SETTINGS}. Received: settings={self.settings!r}")
        for s in settings:
            check_choice("settings", s, SETTINGS)
        set_("settings", settings)
        check_choice("start", self.start, STARTS)
        set_("map_field_steps", check_int("map_field_steps", self.map_field_steps, minimum=1))
        check_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        check_choice("bias_coordinates", self.bias_coordinates, BIAS_COORDINATES)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("bias_kernel", self.bias_kernel, BIAS_KERNELS)
        set_("bias_steps", check_int("bias_steps", self.bias_steps, minimum=1))
        check_choice("bias_carry", self.bias_carry, BIAS_CARRIES)
        if self.bias_carry != "none" and self.sampler != "gibbs":
            raise ValueError(f"bias_carry needs sampler='gibbs' (the field's move is a block of it). "
                             f"Received: bias_carry={self.bias_carry!r}, sampler={self.sampler!r}")
        set_("bias_min_step_factor", check_fraction("bias_min_step_factor", self.bias_min_step_factor))
        if self.bias_min_step_factor != 1.0 and (self.sampler != "gibbs" or self.bias_kernel == "slice"):
            raise ValueError("bias_min_step_factor needs sampler='gibbs' with bias_kernel 'hmc' or 'nuts' (a "
                             f"step size to draw). Received: bias_min_step_factor={self.bias_min_step_factor}, "
                             f"sampler={self.sampler!r}, bias_kernel={self.bias_kernel!r}")
        check_choice("bias_metric", self.bias_metric, BIAS_METRICS)
        if self.bias_metric != "start" and (self.sampler != "gibbs" or self.bias_coordinates != "local_linear"):
            raise ValueError("bias_metric='warmup' needs sampler='gibbs' with bias_coordinates='local_linear' (the "
                             f"metric is estimated in its coordinates). Received: bias_metric={self.bias_metric!r}, "
                             f"sampler={self.sampler!r}, bias_coordinates={self.bias_coordinates!r}")
        check_choice("field_metric", self.field_metric, FIELD_METRICS)
        if self.field_metric != "start" and (self.sampler != "gibbs" or self.preconditioner == "none"):
            raise ValueError("field_metric='warmup' needs sampler='gibbs' with a preconditioner (the scales it "
                             f"re-estimates). Received: field_metric={self.field_metric!r}, sampler={self.sampler!r}, "
                             f"preconditioner={self.preconditioner!r}")
        check_choice("bias_scale_coordinate", self.bias_scale_coordinate, BIAS_SCALE_COORDINATES)
        if self.bias_scale_coordinate != "curvature" and self.bias_coordinates not in ("local_linear", "pilot"):
            raise ValueError("bias_scale_coordinate is a choice of the local-linear coordinates: it needs "
                             "bias_coordinates 'local_linear' or 'pilot'. Received: bias_scale_coordinate="
                             f"{self.bias_scale_coordinate!r}, bias_coordinates={self.bias_coordinates!r}")
        set_("n_bias_pilot", check_int("n_bias_pilot", self.n_bias_pilot, minimum=MIN_BIAS_PILOT))
        if self.sampler == "gibbs" and self.devices != 1:
            raise ValueError(f"devices must be 1 with sampler='gibbs' (its chains run on one device). "
                             f"Received: devices={self.devices}")
        set_("n_probes", check_int("n_probes", self.n_probes, minimum=1))
        set_("n_samples", check_int("n_samples", self.n_samples, minimum=20))
        if self.n_bins is not None:
            set_("n_bins", check_int("n_bins", self.n_bins, minimum=1))
        set_("thin", check_int("thin", self.thin, minimum=1))
        set_("n_field_draws", check_int("n_field_draws", self.n_field_draws, minimum=2))
        set_("keep_checkpoint", check_bool("keep_checkpoint", self.keep_checkpoint))
        set_("workers", check_int("workers", self.workers, minimum=1))
        set_("keep_field_draws", check_bool("keep_field_draws", self.keep_field_draws))
        set_("metric_windows", check_int("metric_windows", self.metric_windows, minimum=1,
                                         maximum=MAX_METRIC_WINDOWS))
        check_sampler_settings(self)
        if self.workers > 1 and self.devices != 1:
            raise ValueError(f"workers must be 1 when the chains are split over devices (each process would claim "
                             f"them all). Received: workers={self.workers}, devices={self.devices}")
        from tfhalo.field.analysis import MIN_DRAWS_PER_CHAIN, MIN_INTERVAL_DRAWS

        saved = -(-self.n_samples // self.thin)  # draws 0, thin, 2 thin, ... of each chain
        if saved < MIN_DRAWS_PER_CHAIN or saved * self.n_chains < MIN_INTERVAL_DRAWS:
            raise ValueError(f"the chains must save at least {MIN_DRAWS_PER_CHAIN} draws each and "
                             f"{MIN_INTERVAL_DRAWS} in all (every thin-th of n_samples per chain) for the coverage's "
                             f"intervals; these settings save {saved} per chain, {saved * self.n_chains} in all. "
                             f"Received: n_samples={self.n_samples}, thin={self.thin}, n_chains={self.n_chains}")
        for name in ("bias_metric", "field_metric"):
            if getattr(self, name) == "warmup" and self.n_warmup < MIN_WARMUP_FOR_WARMUP_METRIC:
                raise ValueError(f"n_warmup must be at least {MIN_WARMUP_FOR_WARMUP_METRIC} with {name}='warmup' (its "
                                 f"first half estimates the metric). Received: n_warmup={self.n_warmup}")
        if self.metric_windows > 1:
            if "warmup" not in (self.bias_metric, self.field_metric):
                raise ValueError("metric_windows above 1 needs bias_metric or field_metric 'warmup' (the metrics "
                                 f"the windows re-estimate). Received: metric_windows={self.metric_windows}, "
                                 f"bias_metric={self.bias_metric!r}, field_metric={self.field_metric!r}")
            least = MIN_WARMUP_FOR_WARMUP_METRIC * (2 ** self.metric_windows - 1)
            if self.n_warmup < least:
                raise ValueError(f"n_warmup must be at least {least} with metric_windows={self.metric_windows} (each "
                                 f"window twice the one before, the first at least {MIN_WARMUP_FOR_WARMUP_METRIC // 2} "
                                 f"sweeps). Received: n_warmup={self.n_warmup}")

    @property
    def chains_seed(self) -> int:
        return self.seed if self.sampler_seed is None else self.sampler_seed

    def sim_params(self):
        """The :class:`tfhalo.sim.SimulationPreset` of the N-body run."""
        from tfhalo.sim.suite import resolve_preset

        overrides = {k: v for k, v in (("n_side", self.n_side), ("box_size", self.box_size)) if v is not None}
        return resolve_preset(self.sim_preset, **overrides)

    def sampler_config(self, seed_offset: int = 0):
        """The chains' :class:`tfhalo.inference.SamplerConfig` (HMC with windowed adaptation)."""
        import tfhalo.inference as inf

        return inf.SamplerConfig(kernel="hmc", num_chains=self.n_chains, num_warmup=self.n_warmup,
                                 num_samples=self.n_samples, target_accept=self.target_accept,
                                 num_leapfrog_steps=self.leapfrog_steps, seed=self.chains_seed + seed_offset,
                                 jit_compile=self.jit_compile, devices=self.devices)

    @classmethod
    def preset(cls, name: str = "quick", seed: int = 0, **overrides) -> "Config":
        """A preset's settings with ``seed`` and any field replaced.

        Presets:
            quick: one N-body run of 128^3 particles in (64 Mpc/h)^3, a 16^3 inference
                grid of 4 Mpc/h voxels (the paper's 3.9 Mpc/h) with 2 LPT particles per voxel
                per side, halos above 5e11 Msun/h (about 1,800 halos; the paper's 2e12 leaves
                about 550, too few for the bias to converge in minutes), 2LPT, the mock and
                N-body catalogues; the blocked sampler of :data:`QUICK_SAMPLER` (the route
                nearest to converging within the budget: one Gaussian in the mixture head, HMC moves
                of the bias given the field in its local-linear coordinates, the field's move
                carrying the bias, both metrics from the warm-up, a float32 forward model) with
                2 chains of 300 warm-up and 600 kept sweeps; the two settings run at once, one
                process each (``workers=2``).  About 10 minutes on 2 cores (``make demo-field``;
                a quarter of it compiling under TensorFlow).
            demo: ``quick`` with 300 kept sweeps, what ``make demo`` runs (about 8 minutes).
            paper: a 64^3 grid over 250 Mpc/h on a ``"charnock2020"`` simulation
                (320^3 particles), for a GPU; the chains keep every 20th draw of the white
                noise (``keep_field_draws=False``).

        Raises:
            ValueError: unknown preset or field, or an invalid value (named).
        """
        from tfhalo.studies.common import preset_config

        return preset_config(cls, PRESETS, name, seed, overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Config":
        """Inverse of :meth:`to_dict`: the config a study's ``results.json`` records, checked again.

        Fields the dict lacks take their defaults (a results.json written before they existed).

        Raises:
            ValueError: ``d`` is not a dict, names an unknown field, or holds an invalid value (named).

        Example:
            >>> cfg = Config.from_dict(json.loads(Path("runs/field_level/results.json").read_text())["config"])
        """
        if not isinstance(d, dict):
            raise ValueError(f"a field-level Config dict must be a JSON object. Received: d={d!r:.200}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown field-level Config fields {unknown}. Expected a subset of {sorted(fields)}. "
                             f"Received: d={d!r:.200}")
        return cls(**d)


#: The quick preset's sampler and data: the blocked route nearest to converging on 2 cores
#: (docs/field_level.md, "The quick preset"): halos above 5e11 Msun/h, a one-Gaussian head, HMC
#: moves of the bias given the field with jittered steps in the local-linear coordinates (log
#: radial scale), the field's move carrying the bias, the bias metric and the field's Fourier
#: scales from the first half of the warm-up, a float32 forward model; the mock and N-body settings.
QUICK_SAMPLER = dict(threshold_mass=5e11, n_components=1, sampler="gibbs", bias_kernel="hmc", bias_steps=5,
                     bias_min_step_factor=0.25, bias_coordinates="local_linear", bias_carry="npe_moments",
                     bias_scale_coordinate="log_scale", bias_metric="warmup", field_metric="warmup",
                     forward_dtype="float32", settings=("mock", "nbody"))

#: The Config's own defaults for the sampler fields of :data:`QUICK_SAMPLER`: one joint HMC kernel on the
#: paper's two-Gaussian head with a float64 forward model (what a preset without QUICK_SAMPLER runs).
JOINT_SAMPLER = {f.name: f.default for f in dataclasses.fields(Config)
                 if f.name in QUICK_SAMPLER and f.name not in ("threshold_mass", "settings")}

# Its two settings run at once, one process each (workers=2): on 2 cores about the time of one.
_QUICK = dict(sim_preset="quick", n_side=128, box_size=64.0, n_grid=16, particle_factor=2, n_warmup=300,
              n_samples=600, workers=2, **QUICK_SAMPLER)

PRESETS = {
    "quick": _QUICK,
    "demo": dict(_QUICK, n_samples=300),
    "paper": dict(sim_preset="charnock2020", n_side=320, box_size=250.0, n_grid=64, threshold_mass=2e12,
                  particle_factor=2, map_steps=3000, map_starts=4, n_chains=4, n_warmup=1000, n_samples=4000,
                  leapfrog_steps=30, thin=20, n_field_draws=100, keep_field_draws=False),
}


#: The Config fields a command line may override, as ``(flag, field, type, help)``; the study's script
#: (``experiments/field_level.py``) and the calibration benchmark (``benchmarks/field_calibration.py``) offer
#: the same flags through :func:`add_override_arguments` and :func:`overrides_from_args`.
CLI_OVERRIDES = (
    ("--sampler-seed", "sampler_seed", int, "chains' seed (default: --seed)"),
    ("--chains", "n_chains", int, None),
    ("--n-samples", "n_samples", int, "kept draws per chain (>= 20)"),
    ("--n-warmup", "n_warmup", int, "warm-up iterations per chain"),
    ("--thin", "thin", int, "keep every thin-th draw of the white noise in samples.h5"),
    ("--n-grid", "n_grid", int, "inference grid per side"),
    ("--n-side", "n_side", int, "N-body particles per side"),
    ("--box-size", "box_size", float, "box side, Mpc/h"),
    ("--threshold-mass", "threshold_mass", float, "halo mass threshold, Msun/h"),
    ("--order", "order", int, "LPT order: 1 or 2"),
    ("--start", "start", str, "prior or map"),
    ("--preconditioner", "preconditioner", str, "curvature, prior or none"),
    ("--bias-coordinates", "bias_coordinates", str,
     "diagonal, local_linear or pilot (a dense metric from NUTS draws of the bias given the starting fields)"),
    ("--bias-pilot", "n_bias_pilot", int,
     "warm-up iterations and draws per chain of the bias pilot (--bias-coordinates pilot)"),
    ("--sampler", "sampler", str, "joint (one HMC kernel) or gibbs (field by HMC, bias by --bias-kernel, alternately)"),
    ("--bias-kernel", "bias_kernel", str, "slice, nuts or hmc: the bias block's kernel (--sampler gibbs)"),
    ("--bias-steps", "bias_steps", int, "transitions of the bias kernel per Gibbs sweep"),
    ("--bias-carry", "bias_carry", str,
     "none or npe_moments: the field's move carries the bias, the NPE pre-activation's voxel mean and variance "
     "held (--sampler gibbs)"),
    ("--bias-min-step-factor", "bias_min_step_factor", float,
     "below 1, each HMC/NUTS bias transition's step is the adapted one times a log-uniform factor from this to 1"),
    ("--bias-metric", "bias_metric", str,
     "start (the bias coordinates' Laplace map at the chains' start) or warmup (a dense metric from the bias draws "
     "of the first half of the warm-up; --sampler gibbs --bias-coordinates local_linear)"),
    ("--field-metric", "field_metric", str,
     "start (the field's Fourier scales from the curvature at the chains' start) or warmup (rescaled per |k| shell "
     "by the spread of the white-noise draws of the first half of the warm-up; --sampler gibbs)"),
    ("--metric-windows", "metric_windows", int,
     "in how many windows, each twice the one before, the first half of the warm-up re-estimates the warm-up "
     "metrics (--bias-metric or --field-metric warmup)"),
    ("--bias-scale-coordinate", "bias_scale_coordinate", str,
     "curvature or log_scale: the NPE radial scale's coordinate in the local-linear bias coordinates "
     "(--bias-coordinates local_linear or pilot)"),
    ("--leapfrog-steps", "leapfrog_steps", int, None),
    ("--target-accept", "target_accept", float, None),
    ("--map-steps", "map_steps", int, "Adam steps of the bias fit"),
    ("--forward-dtype", "forward_dtype", str,
     "float64 or float32: the forward model's arithmetic inside the chains (float32: faster gradients; the "
     "states, bias model and likelihood stay float64)"),
    ("--n-components", "n_components", int,
     "Gaussians of the bias model's mixture head: 2 (the paper's, 17 parameters) or 1 (11 parameters)"),
    ("--devices", "devices", int, "JAX devices to split the chains over (KERAS_BACKEND=jax)"),
    ("--workers", "workers", int, "settings run at once, each in its own process (the cores shared among them)"),
)


def add_override_arguments(parser, exclude=()) -> None:
    """Add the flags of :data:`CLI_OVERRIDES` (less the Config fields in ``exclude``) to an argparse parser.

    Each flag defaults to None, which keeps the preset's value; ``--no-xla`` sets ``jit_compile=False``,
    ``--keep-checkpoint`` ``keep_checkpoint=True`` and ``--thin-chains`` / ``--all-field-draws``
    ``keep_field_draws`` False / True.
    """
    for flag, field, kind, help_text in CLI_OVERRIDES:
        if field not in exclude:
            parser.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    if "jit_compile" not in exclude:
        parser.add_argument("--no-xla", dest="jit_compile", action="store_false", default=None,
                            help="run the chains without XLA")
    if "keep_checkpoint" not in exclude:
        parser.add_argument("--keep-checkpoint", dest="keep_checkpoint", action="store_true", default=None,
                            help="keep the chains' checkpoint, so that a rerun with a larger --n-samples extends "
                            "them")
    if "keep_field_draws" not in exclude:
        parser.add_argument("--thin-chains", dest="keep_field_draws", action="store_false", default=None,
                            help="the chains keep the white noise only every --thin-th draw, with its mean and "
                            "every draw's power (memory; the paper preset's default)")
        parser.add_argument("--all-field-draws", dest="keep_field_draws", action="store_true", default=None,
                            help="the chains keep every draw of the white noise (the quick preset's default)")


def overrides_from_args(args) -> dict:
    """The Config overrides the flags of :func:`add_override_arguments` give: ``{field: value}`` of those set."""
    fields = [field for _, field, _, _ in CLI_OVERRIDES] + ["jit_compile", "keep_checkpoint", "keep_field_draws"]
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


# -- truth -----------------------------------------------------------------------------------------------------


def truth_white_noise(simulation, n_grid: int) -> np.ndarray:
    """The simulation's white noise, Fourier-truncated to the inference grid: ``(n_grid,)*3`` float64.

    The linear field at ``a = 1`` is the stored ``initial_density`` over the
    growth factor at ``z_initial``; dividing its Fourier coefficients by the
    amplitude ``sqrt(P(k) N^3 / V)`` of :func:`tfhalo.sim.ics.gaussian_field`
    gives back the white noise of the ``N^3`` lattice (any simulation with a
    stored initial density and the same cosmology: generated, GenetIC or
    Gadget ICs), and :func:`tfhalo.field.forward.truncate_white_noise` keeps
    the modes the inference grid represents.  The ``k = 0`` mode, which no
    linear field contains (and so neither the data nor the figures), is zero.
    """
    import scipy.fft

    from tfhalo.field.forward import linear_amplitude, truncate_white_noise

    n_side = simulation.initial_density.shape[0]
    a_initial = 1.0 / (1.0 + simulation.z_initial)
    delta0 = np.asarray(simulation.initial_density, np.float64) / float(simulation.cosmology.growth_factor(a_initial))
    amp = linear_amplitude(n_side, simulation.box_size, simulation.cosmology)
    coeffs = scipy.fft.rfftn(delta0, workers=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        coeffs = np.where(amp > 0, coeffs / np.where(amp > 0, amp, 1.0), 0.0)
    omega = scipy.fft.irfftn(coeffs, s=delta0.shape, workers=-1)
    return truncate_white_noise(omega, n_grid)


def linear_fields(omega, box_size: float, cosmology) -> np.ndarray:
    """``(D, n, n, n)`` linear density at ``a = 1`` of ``(D, n, n, n)`` white noise (NumPy float64)."""
    import scipy.fft

    from tfhalo.field.forward import linear_amplitude

    omega = np.asarray(omega, np.float64)
    n = omega.shape[-1]
    amp = linear_amplitude(n, box_size, cosmology)
    return scipy.fft.irfftn(scipy.fft.rfftn(omega, axes=(-3, -2, -1), workers=-1) * amp, s=(n, n, n),
                            axes=(-3, -2, -1), workers=-1)


def field_reduction(config: Config, forward):
    """What the analysis needs of the white noise, as a :class:`~tfhalo.inference.DrawReduction`.

    The white noise (the first ``n^3`` coordinates of a state) is kept every
    ``config.thin``-th draw, its mean over all draws, and every draw's linear power in
    ``config.n_bins`` bins (``summaries["power"]``, ``(S, C, B)``: the power spectra and the
    R-hat and ESS of the lowest bins).  The chains apply it as they run when
    ``config.keep_field_draws`` is False; the analysis applies it to chains that kept
    every draw, so both give the same report.

    Args:
        config: the study's :class:`Config`.
        forward: the :class:`~tfhalo.field.forward.LPTForwardModel` (its box and cosmology).

    Returns:
        A :class:`~tfhalo.inference.DrawReduction`.
    """
    import json

    from tfhalo.field import analysis as fa
    from tfhalo.inference.reduction import DrawReduction

    n, box, cosmology = config.n_grid, forward.box_size, forward.cosmology
    bins = fa.k_bins(n, box, n_bins=config.n_bins)

    def summary(omega):  # (draws, C, n^3) -> {"power": (draws, C, B)}
        flat = omega.reshape(-1, n, n, n)
        power = np.empty((flat.shape[0], bins.n_bins))
        for i in range(0, flat.shape[0], 64):  # a few fields' FFTs at a time
            power[i:i + 64] = fa.binned_power(linear_fields(flat[i:i + 64], box, cosmology), bins)
        return {"power": power.reshape(omega.shape[:2] + (bins.n_bins,))}

    key = json.dumps({"summary": "binned linear power", "edges": [f"{e:.10g}" for e in bins.edges]})
    return DrawReduction(start=0, stop=n**3, thin=config.thin, summary_fn=summary, key=key)


def _prior_binned_power(bins, cosmology) -> np.ndarray:
    """``(B,)`` the prior's expected binned power: the mean of ``P(|k|)`` over each bin's modes."""
    from tfhalo.sim.grid import fft_wavenumber_magnitude

    kmag = fft_wavenumber_magnitude(bins.n, bins.box_size)
    sel = bins.index >= 0
    power = np.zeros_like(kmag)
    power[sel] = cosmology.linear_power(kmag[sel])   # k = 0 and the excluded modes stay out of every bin
    return bins.average(power)


# -- steps -----------------------------------------------------------------------------------------------------


def _load_simulation(config: Config, suite, progress: bool):
    from tfhalo.sim import load
    from tfhalo.studies import common

    paths = common.ensure_suite(suite, config.sim_params(), 1, config.seed, progress=progress)
    sim = load(paths[0])
    if sim.initial_density.shape[0] % config.n_grid:
        raise common.StudyInputError(
            f"n_grid must divide the simulation's {sim.initial_density.shape[0]}^3 lattice. "
            f"Received: n_grid={config.n_grid}")
    return sim, paths[0]


def bias_model(config: Config):
    """The study's neural bias model (float64) for ``config``: its threshold, grid and head.

    Charnock et al. (2020), arXiv:1909.06379 (:func:`tfhalo.bias.model.build_model`); with
    ``config.n_components = 2`` the paper's 17-parameter model.
    """
    from tfhalo.bias.model import build_model

    return build_model(math.log(config.threshold_mass), config.n_grid, n_components=config.n_components,
                       dtype="float64")


def forward_model(config: Config, sim, dtype: Optional[str] = None):
    """The study's LPT forward model for ``config`` on the box and cosmology of ``sim``.

    Args:
        config: the study's :class:`Config`.
        sim: the simulation (its box and cosmology).
        dtype: the model's arithmetic; ``None`` for ``config.forward_dtype`` (the chains').

    Returns:
        :class:`~tfhalo.field.forward.LPTForwardModel` of ``config.n_grid`` cells per side,
        ``config.order`` and ``config.particle_factor``.
    """
    from tfhalo.field.forward import LPTForwardModel

    return LPTForwardModel(config.n_grid, sim.box_size, cosmology=sim.cosmology, order=config.order,
                           particle_factor=config.particle_factor,
                           dtype=config.forward_dtype if dtype is None else dtype)


@dataclasses.dataclass(frozen=True)
class FinishedStudy:
    """What a finished field-level run recorded for one setting, read back (:func:`load_finished_study`).

    Attributes:
        config: the run's :class:`Config`.
        simulation: the N-body :class:`tfhalo.sim.Simulation` it ran on.
        omega_true: ``(n, n, n)`` the truth's white noise on the inference grid.
        theta_fit: ``(n_bias,)`` the bias fitted to the N-body field (a mock's generating bias).
        catalogue: the setting's halos, a :class:`~tfhalo.field.posterior.FieldCatalogue`.
        parameter_names: the bias parameters' names, without the model's prefix.
    """

    config: Config
    simulation: object
    omega_true: np.ndarray
    theta_fit: np.ndarray
    catalogue: object
    parameter_names: tuple


def load_finished_study(out, setting: str = "mock") -> FinishedStudy:
    """Read back a finished field-level run (``run(..., out=out)``) for re-analysis without its chains.

    Args:
        out: the run's output folder (its ``results.json``, ``bias_fit.npz`` and
            ``<setting>/samples.h5``).
        setting: one of :data:`SETTINGS` that the run sampled.

    Returns:
        A :class:`FinishedStudy`.

    Raises:
        ValueError: ``setting`` unknown, a file missing (named), or a ``results.json`` without a
            valid config, naming ``out``.

    Example:
        >>> study = load_finished_study("runs/demo/field_level")
        >>> posterior = FieldLevelPosterior(forward_model(study.config, study.simulation),
        ...                                 bias_model(study.config), study.catalogue)   # doctest: +SKIP
    """
    import json

    import h5py

    from tfhalo.field.posterior import FieldCatalogue
    from tfhalo.sim import load

    check_choice("setting", setting, SETTINGS)
    out = Path(out)
    results, samples, fit = out / "results.json", out / setting / SAMPLES_FILE, out / "bias_fit.npz"
    for path in (results, samples, fit):
        if not path.is_file():
            raise ValueError(f"out must hold a finished field-level run with the {setting!r} setting; "
                             f"{path.relative_to(out)} is missing. Received: out={str(out)!r}")
    study = json.loads(results.read_text())
    try:
        config = Config.from_dict(study.get("config"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"out's results.json holds no valid field-level config ({err}). "
                         f"Received: out={str(out)!r}") from None
    with h5py.File(samples) as f:
        omega = f["truth/omega"][...].astype(np.float64)
        names = tuple((n.decode() if isinstance(n, bytes) else str(n)).split("/", 1)[-1]
                      for n in f["theta"].attrs["names"])
        box = float(f.attrs["box_size"])
        catalogue = FieldCatalogue(f["data/halo_positions"][...], f["data/halo_ln_mass"][...], box,
                                   int(f.attrs["n_grid"]), float(f["data"].attrs["log_mass_threshold"]))
    theta = np.asarray(np.load(fit)["theta"], np.float64)
    return FinishedStudy(config, load(study["simulation"]["path"]), omega, theta, catalogue, names)


def coverage_from_samples(path, n_bins: Optional[int] = None) -> dict:
    """The coverage of the true white noise, recomputed from a setting's saved draws (``samples.h5``).

    Reads the thinned white-noise draws ``omega (S, C, n, n, n)`` and the truth, and returns
    :func:`tfhalo.field.analysis.coverage` of their Hartley coefficients, with each bin judged
    against the nominal levels (``z``) and against what exact chains of these draws give
    (``z_expected``): a run written before the study judged coverage the second way can be
    re-judged without its chains.  The run judges the same float32 draws it stores, so this
    gives its coverage back.

    Args:
        path: a ``<out>/<setting>/samples.h5`` written by :func:`run`.
        n_bins: the k bins (None: the study's default, as ``Config.n_bins``).

    Returns:
        The coverage dict, levels :data:`LEVELS`.

    Raises:
        ValueError: ``path`` not a file.

    Example:
        >>> cover = coverage_from_samples("runs/demo/field_level/mock/samples.h5")
        >>> max(abs(z) for v in cover["levels"].values() for z in v["z_expected"])   # doctest: +SKIP
    """
    import h5py

    from tfhalo.field import analysis as fa

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be a samples file of a field-level run. Received: path={str(path)!r}")
    with h5py.File(path) as f:
        omega = f["omega"][...]                              # (S, C, n, n, n), float32 as stored
        truth = f["truth/omega"][...].astype(np.float64)
        box = float(f.attrs["box_size"])
    return _white_noise_coverage(omega, truth, fa.k_bins(truth.shape[0], box, n_bins=n_bins))


def _white_noise_coverage(omega, truth, bins) -> dict:
    """Coverage of the true white noise ``truth (n, n, n)`` by the draws ``omega (S, C, n, n, n)``.

    The draws are judged as ``samples.h5`` stores them (float32), so that a run and a re-analysis
    of its file agree exactly: with few effective draws, one coefficient on an interval's edge
    moves the expectation's ESS.
    """
    from tfhalo.field import analysis as fa

    s, c, n = omega.shape[:3]
    # copy=False: draws read back from samples.h5 are float32 already, so only the float64 copy is made
    stored = np.asarray(omega).astype(np.float32, copy=False).astype(np.float64).reshape(s * c, n, n, n)
    return fa.coverage(fa.hartley_coefficients(stored), fa.hartley_coefficients(truth)[0], bins, LEVELS,
                       n_chains=c)


def _bias_fit(config: Config, sim, out: Path, progress: bool, overwrite: bool):
    """The bias parameters fitted to the N-body density on the inference grid (cached)."""
    from tfhalo.bias.fields import bias_data_from_simulation
    from tfhalo.bias.fit import fit_map
    from tfhalo.bias.likelihood import NeuralBiasLikelihood
    from tfhalo.studies import common

    data = bias_data_from_simulation(sim, config.n_grid, config.threshold_mass, source="nbody")
    model = bias_model(config)
    like = NeuralBiasLikelihood(model, data)
    key = dict(step="bias_fit", simulation=common.fingerprint(sim.initial_density), n_grid=config.n_grid,
               threshold_mass=config.threshold_mass, map_steps=config.map_steps, map_starts=config.map_starts,
               seed=config.seed)
    if config.n_components != 2:  # the paper's head, which keys written before the field existed stand for
        key["n_components"] = config.n_components
    cache = common.Cache(out, key, overwrite=overwrite)
    stored = cache.load("bias_fit.npz")
    if stored is None:
        fit = fit_map(like, steps=config.map_steps, n_starts=config.map_starts, seed=config.seed,
                      progress=progress, jit_compile=config.jit_compile)
        stored = {"theta": fit.theta, "log_posterior": np.asarray(fit.log_posterior)}
        cache.save("bias_fit.npz", **stored)
    like.layout.set(model, stored["theta"])
    return model, data, {k: np.asarray(v) for k, v in stored.items()}


def _conditional_bias_scale(posterior, state) -> np.ndarray:
    """``(n_bias,)`` conditional widths ``1 / sqrt(-d^2 ln p / d theta_i^2)`` of the bias at ``state (P,)``.

    Floored at the prior's precision (width at most the prior's 10) and at 1e-4.
    """
    from tfhalo import backend
    from tfhalo.bias.fit import hessian_of

    n_field, n = posterior.n_field, posterior.forward.n_grid
    field = backend.constant(np.asarray(state[:n_field], np.float64).reshape(1, n, n, n))
    # The bias's conditional on this field: the joint's Hessian in theta, without differentiating
    # the NPE's convolution at every row (its basis responses are computed once).
    conditional = posterior.bias_conditional(backend.as_one_program(posterior.log_density)(field))

    def log_prob_theta(theta):
        return conditional(theta[None, :])[0]

    curvature = np.diag(hessian_of(log_prob_theta, np.asarray(state[n_field:], np.float64)))
    floor = 1.0 / posterior.prior_scale**2
    return np.clip(1.0 / np.sqrt(np.maximum(curvature, floor)), 1e-4, None)


def _catalogue(config: Config, setting: str, sim, forward, model, omega_true, theta_fit):
    from tfhalo.field.mock import draw_mock_catalogue
    from tfhalo.field.posterior import FieldCatalogue

    from tfhalo.sim.grid import wrap_periodic

    if setting == "nbody":
        return FieldCatalogue.from_halos(wrap_periodic(sim.halos.centre, sim.box_size), sim.halos.mass,
                                         sim.box_size, config.n_grid, config.threshold_mass)
    return draw_mock_catalogue(forward, model, omega_true, theta_fit, seed=config.seed + 1000)


def _map_field(posterior, state, steps: int, progress: bool) -> np.ndarray:
    """Adam on the white noise (bias fixed) from ``state``: the ``start="map"`` starting points."""
    import keras
    from keras import ops
    from tqdm.auto import tqdm

    from tfhalo import backend

    n_field = posterior.n_field
    var = keras.Variable(state[:, :n_field], dtype="float64", name="omega")
    theta = backend.constant(state[:, n_field:])
    opt = keras.optimizers.Adam(learning_rate=0.05)

    def loss(omega):
        return -ops.sum(posterior.log_prob(ops.concatenate([omega, theta], axis=1)))

    # The gradient is compiled (tf.function or jax.jit); Adam's update of the Keras variable runs
    # eagerly, since a JAX-compiled function cannot assign to a variable.
    value_and_grad = backend.jit(lambda omega: backend.value_and_gradient(loss, omega), jit_compile=False)
    for _ in tqdm(range(steps), desc="field MAP (Adam)", disable=not progress, mininterval=1.0):
        _, grad = value_and_grad(var.value)
        opt.apply_gradients([(grad, var)])
    return np.concatenate([backend.to_numpy(var.value).astype(np.float64), state[:, n_field:]], axis=1)


def _sample_setting(config: Config, setting: str, posterior, theta_fit, checkpoint_dir: Path, progress: bool,
                    memo: Optional[dict] = None):
    """Chains of one setting's joint posterior, with the sampler's cost and the starting method.

    ``memo`` (:func:`_setup_memo`): the start, the scales and the joint chains' bijector of an earlier
    run of the same chains in this process are taken from it, and this run's are put there.
    """
    import tfhalo.inference as inf

    offset = SETTINGS.index(setting)
    memo = {} if memo is None else memo
    t0 = time.perf_counter()
    if "start" not in memo:
        memo["start"] = _chains_start(config, setting, posterior, theta_fit, progress)
    state0, bias_scale, scales = (np.array(a) for a in memo["start"])
    # Without every draw of the white noise the chains keep what the analysis needs of it as they run.
    reduction = None if config.keep_field_draws else field_reduction(config, posterior.forward)
    if setting in FIXED_BIAS_SETTINGS:
        chains = _fixed_bias_chains(config, posterior, state0, scales, offset, checkpoint_dir, progress, reduction)
        info = {"bias_fixed": True}
    elif config.sampler == "gibbs" and "warmup" in (config.bias_metric, config.field_metric):
        bias_bijector, info = _bias_bijector(config, posterior, state0, theta_fit, bias_scale, offset,
                                             checkpoint_dir, progress)
        chains, stage_info = _gibbs_chains_with_warmup_metric(config, posterior, state0, scales, bias_bijector,
                                                              offset, checkpoint_dir, progress, reduction)
        info = dict(info, **stage_info)
    elif config.sampler == "gibbs":
        bias_bijector, info = _bias_bijector(config, posterior, state0, theta_fit, bias_scale, offset,
                                             checkpoint_dir, progress)
        chains = _gibbs_chains(config, posterior, state0, scales, bias_bijector, offset, checkpoint_dir, progress,
                               reduction)
    else:
        if "joint_bijector" not in memo:
            memo["joint_bijector"] = _joint_bijector(config, posterior, state0, theta_fit, bias_scale, scales,
                                                     offset, checkpoint_dir, progress)
        bijector, info = memo["joint_bijector"]
        chains = inf.sample(posterior.log_prob, state0, config.sampler_config(seed_offset=offset),
                            bijector=bijector, progress=progress, checkpoint_dir=checkpoint_dir, reduction=reduction)
    info = dict(info, setup_s=time.perf_counter() - t0 - chains.seconds, field_scale_min=float(np.min(scales)),
                field_scale_max=float(np.max(scales)), bias_scale=bias_scale.tolist())
    return chains, info


def _chains_start(config: Config, setting: str, posterior, theta_fit, progress: bool):
    """``(state0 (C, P), bias_scale (n_bias,), field scales (n, n, n))``: where a setting's chains start and
    the widths their coordinates are scaled by."""
    from tfhalo.field.precondition import curvature_scales

    n, n_field, n_bias = config.n_grid, posterior.n_field, posterior.n_bias
    offset = SETTINGS.index(setting)
    rng = np.random.default_rng([config.chains_seed, offset, 17])
    omega0 = rng.standard_normal((config.n_chains, n_field))
    state0 = np.concatenate([omega0, np.tile(theta_fit, (config.n_chains, 1))], axis=1)
    if config.start == "map":
        state0 = _map_field(posterior, state0, config.map_field_steps, progress)
    # The bias coordinates are scaled by their conditional widths at the start (the curvature of the
    # joint target in theta given the field). The N-body fit's marginal Laplace widths are no
    # guide: along some directions (a mixture width's slope) the expected halo count grows like
    # exp(sigma^2 / 2), and a step of one marginal width lands where it has overflowed.
    bias_scale = _conditional_bias_scale(posterior, state0[0])
    # Chains start at the fit, dispersed by a tenth of those widths, so that R-hat can see a
    # chain that does not leave its start (a fixed bias stays at the fit).
    if setting not in FIXED_BIAS_SETTINGS:
        state0[:, n_field:] += 0.1 * bias_scale[None, :] * rng.standard_normal((config.n_chains, n_bias))
    if config.preconditioner == "curvature":
        scales = curvature_scales(posterior.log_prob, state0, n, n_probes=config.n_probes,
                                  seed=config.chains_seed + offset)
    else:
        scales = np.ones((n, n, n))
    return state0, bias_scale, scales


def _joint_bijector(config: Config, posterior, state0, theta_fit, bias_scale, scales, offset: int,
                    checkpoint_dir: Optional[Path], progress: bool):
    """The joint chains' bijector (None: no preconditioner) and what building it cost."""
    from tfhalo import backend
    from tfhalo.field.precondition import FourierPreconditioner

    n, n_field, n_bias = config.n_grid, posterior.n_field, posterior.n_bias
    if config.preconditioner == "none":
        return None, {}
    if config.bias_coordinates == "diagonal":
        return FourierPreconditioner(n, n_bias, field_scale=scales, bias_loc=theta_fit, bias_scale=bias_scale), {}
    bias_bijector, info = _bias_bijector(config, posterior, state0, theta_fit, bias_scale, offset, checkpoint_dir,
                                         progress)
    return backend.tfp.bijectors.Blockwise([FourierPreconditioner(n, 0, field_scale=scales), bias_bijector],
                                           block_sizes=[n_field, n_bias]), info


def _bias_bijector(config: Config, posterior, state0, theta_fit, bias_scale, offset: int,
                   checkpoint_dir: Optional[Path], progress: bool):
    """The bias block's bijector in ``config.bias_coordinates``, and what building it cost (the pilot's record)."""
    from tfhalo import backend

    tfb = backend.tfp.bijectors
    if config.bias_coordinates == "pilot":
        pilot_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / "bias_pilot"
        bijector, pilot = _pilot_bias_bijector(config, posterior, state0, config.chains_seed + offset + 1000,
                                               pilot_dir, progress)
        return bijector, {"bias_pilot": {"seconds": float(pilot.seconds),
                                         "bias_gradient_evaluations": int(pilot.n_gradient_evaluations),
                                         "n_divergent": int(np.sum(pilot.sample_stats["diverging"]))}}
    if config.bias_coordinates == "local_linear":
        return local_linear_bias_bijector(posterior, state0[0], scale_coordinate=config.bias_scale_coordinate), {}
    return tfb.Chain([tfb.Shift(backend.constant(theta_fit)), tfb.Scale(backend.constant(bias_scale))]), {}


def _fixed_bias_chains(config: Config, posterior, state0, field_scale, offset: int, checkpoint_dir: Optional[Path],
                       progress: bool, reduction=None):
    """HMC on the white noise alone, the bias held at ``state0``'s (the same in every chain).

    The chains run in the Fourier-preconditioned coordinates with the sampler's windowed
    step-size and mass-matrix adaptation, as the joint chains do.  The returned chains'
    samples carry the fixed bias after the white noise, ``(S, C, n_field + n_bias)``, so
    the analysis reads them as joint draws (with ``reduction``, the white noise is in
    ``chains.thinned`` and ``samples`` holds the bias alone).
    """
    import dataclasses

    from keras import ops

    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.field.precondition import FourierPreconditioner

    n_field, n_bias = posterior.n_field, posterior.n_bias
    theta = np.asarray(state0[0, n_field:], np.float64)
    theta_row = backend.constant(theta[None, :])

    def field_log_prob(omega):
        bias = ops.broadcast_to(ops.cast(theta_row, omega.dtype), (ops.shape(omega)[0], n_bias))
        return posterior.log_prob(ops.concatenate([omega, bias], axis=1))

    bijector = None if config.preconditioner == "none" else FourierPreconditioner(config.n_grid, 0,
                                                                                  field_scale=field_scale)
    chains = inf.sample(field_log_prob, np.asarray(state0[:, :n_field], np.float64),
                        config.sampler_config(seed_offset=offset), bijector=bijector, progress=progress,
                        checkpoint_dir=checkpoint_dir, reduction=reduction)
    fixed = np.broadcast_to(theta, chains.samples.shape[:2] + (n_bias,))
    return dataclasses.replace(chains, samples=np.concatenate([chains.samples, fixed], axis=-1))


def bias_spread(theta_draws, conditional_scale) -> dict:
    """How far the bias draws spread, in units of the bias's conditional widths at the chains' start.

    The sampling coordinates scale each bias parameter by its width given the
    starting field and the other 16 parameters (the diagonal curvature of the
    joint target in ``theta``).  The pooled standard deviation of the draws over
    that width measures how much wider the bias posterior is than those widths,
    from both sources: the bias parameters' correlations and curvature among
    themselves given a field, and the field's freedom.  It is a lower bound while
    the chains have not spread.  A ratio far above the length of one trajectory
    in those units means that the chains random-walk across the bias posterior
    (see ``docs/field_level.md``, "Known limitations").

    Args:
        theta_draws: ``(S, C, n_bias)`` bias draws (``S >= 2`` draws per chain).
        conditional_scale: ``(n_bias,)`` positive widths the chains were scaled by.

    Returns:
        ``{"per_parameter": (n_bias,) list, "median", "min", "max"}``.

    Raises:
        ValueError: shapes that do not match, too few draws, or non-positive widths.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> round(bias_spread(rng.normal(scale=5.0, size=(4000, 2, 3)), np.ones(3))["median"], 1)
        5.0
    """
    from tfhalo.validation import check_finite_array

    draws = check_finite_array("theta_draws", np.asarray(theta_draws, np.float64))
    scale = check_finite_array("conditional_scale", np.asarray(conditional_scale, np.float64))
    if draws.ndim != 3 or draws.shape[0] * draws.shape[1] < 2 or scale.shape != draws.shape[-1:]:
        raise ValueError(f"theta_draws must be (S, C, n_bias) with at least 2 draws and conditional_scale "
                         f"(n_bias,). Received: shapes {draws.shape} and {scale.shape}")
    if np.any(scale <= 0):
        raise ValueError(f"conditional_scale must be positive. Received: conditional_scale={scale.tolist()}")
    ratio = draws.reshape(-1, draws.shape[-1]).std(axis=0, ddof=1) / scale
    return {"per_parameter": ratio.tolist(), "median": float(np.median(ratio)), "min": float(ratio.min()),
            "max": float(ratio.max())}


def _gibbs_chains(config: Config, posterior, state0, field_scale, bias_bijector, offset: int,
                  checkpoint_dir: Optional[Path], progress: bool, reduction=None, n_warmup: Optional[int] = None,
                  n_samples: Optional[int] = None, seed: Optional[int] = None, joint=None):
    """Blocked chains: HMC on the white noise given the bias, then ``bias_kernel`` on the bias given the field.

    The white noise moves in the Fourier-preconditioned coordinates (``field_scale``)
    by HMC whose step size adapts by dual averaging; the bias moves by TFP's hit-and-run
    ``SliceSampler`` (Neal 2003) or by NUTS with dual averaging (``bias_kernel``) in its
    sampling coordinates (``bias_bijector``), on a conditional that reuses the sweep's
    LPT density.  With ``bias_carry="npe_moments"`` the field's move carries the bias
    (:class:`~tfhalo.field.carry.NPEMomentCarry`).  Every move leaves the joint
    posterior invariant.  ``n_warmup``, ``n_samples`` and ``seed`` replace the config's
    (a stage of the warm-up runs fewer sweeps with its own seed); ``joint`` is
    ``posterior.log_prob`` as :func:`tfhalo.backend.traced_once` made it, for stages that
    share its trace (None: ``posterior.log_prob``, which the kernel traces itself).
    """
    import dataclasses

    from keras import ops

    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.field.precondition import FourierPreconditioner

    tfp = backend.tfp
    n, n_field = config.n_grid, posterior.n_field
    field_bijector = None if config.preconditioner == "none" else FourierPreconditioner(n, 0, field_scale=field_scale)
    n_warmup = config.n_warmup if n_warmup is None else n_warmup
    n_samples = config.n_samples if n_samples is None else n_samples
    seed = config.chains_seed + offset if seed is None else seed
    n_adapt = max(1, int(0.8 * n_warmup))

    def field_kernel(f):
        hmc = tfp.mcmc.HamiltonianMonteCarlo(f, step_size=backend.constant(0.1),
                                             num_leapfrog_steps=config.leapfrog_steps)
        return tfp.mcmc.DualAveragingStepSizeAdaptation(
            hmc, num_adaptation_steps=n_adapt, target_accept_prob=backend.constant(config.target_accept))

    def bias_kernel(f):
        if config.bias_kernel == "slice":
            return tfp.mcmc.SliceSampler(f, step_size=backend.constant(1.0), max_doublings=5)
        if config.bias_kernel == "nuts":
            inner = tfp.mcmc.NoUTurnSampler(f, step_size=backend.constant(0.1), max_tree_depth=BIAS_TREE_DEPTH)
        else:
            inner = tfp.mcmc.HamiltonianMonteCarlo(f, step_size=backend.constant(0.1),
                                                   num_leapfrog_steps=BIAS_LEAPFROG_STEPS)
        if config.bias_min_step_factor != 1.0:
            inner = inf.JitteredStepSize(inner, min_factor=config.bias_min_step_factor)
        # The kernel counts its own transitions, bias_steps per sweep.
        return tfp.mcmc.DualAveragingStepSizeAdaptation(
            inner, num_adaptation_steps=n_adapt * config.bias_steps,
            target_accept_prob=backend.constant(BIAS_TARGET_ACCEPT))

    def bias_conditional(blocks):
        return posterior.bias_conditional(posterior.log_density(ops.reshape(blocks[0], (-1, n, n, n))))

    carry = None
    if config.bias_carry == "npe_moments":
        from tfhalo.field.carry import NPEMomentCarry

        carry = NPEMomentCarry(posterior, np.asarray(state0[0, :n_field], np.float64))
    kernel = inf.GibbsKernel(posterior.log_prob if joint is None else joint, [n_field, posterior.n_bias],
                             [field_kernel, bias_kernel],
                             conditional_fns=[None, bias_conditional], bijectors=[field_bijector, bias_bijector],
                             steps_per_sweep=[1, config.bias_steps], carries=[carry, None])
    # One block length for both phases: each other length would be another compiled program.
    gibbs = inf.GibbsConfig(num_chains=config.n_chains, num_warmup=n_warmup, num_samples=n_samples, seed=seed,
                            block_size=inf.block_size_for(n_warmup, n_samples), jit_compile=config.jit_compile)
    chains = inf.sample_gibbs(kernel, state0, gibbs, progress=progress, checkpoint_dir=checkpoint_dir,
                              reduction=reduction)
    # Per chain and sweep: the gradient at the refreshed start and one per leapfrog step.
    return dataclasses.replace(chains, n_gradient_evaluations=(n_warmup + n_samples) * (config.leapfrog_steps + 1))


def bias_metric_from_draws(bijector, theta_draws):
    """The bias block's coordinates ``theta = bijector(mean + chol(Sigma) z)`` from bias draws.

    ``Sigma`` is Stan's regularised dense-metric estimate (Carpenter et al. 2017;
    :func:`tfhalo.inference.preconditioner_from_draws`) from the draws mapped back to
    ``bijector``'s coordinates, shrunk towards the identity there, that is towards
    ``bijector``'s own metric, with weight ``5 / (n + 5)`` for ``n`` draws: the local-linear
    coordinates' Laplace map at the chains' start (:func:`local_linear_bias_bijector`),
    in which the bias posterior given a typical field is nearly Gaussian.  The draws' own
    mean and covariance are whitened, so a chain whose bias spreads along combinations of
    parameters far wider than the start's curvature widths meets those directions at unit
    scale, while directions the draws have not explored keep a share of the start's widths.
    Built from warm-up draws and then held fixed, the map keeps the chains that use it exact.

    Args:
        bijector: a ``tfp.bijectors.Bijector`` ``(..., P) -> theta (..., P)``, the coordinates the draws
            were sampled in.
        theta_draws: ``(..., P)`` finite bias draws in ``bijector``'s range, at least 2.

    Returns:
        A float64 ``tfp.bijectors.Bijector`` ``z (..., P) -> theta (..., P)``.

    Raises:
        ValueError: draws that are not finite, fewer than 2, or not ``(..., P)`` for ``bijector``.

    Example:
        >>> start = local_linear_bias_bijector(posterior, state0[0])
        >>> metric = bias_metric_from_draws(start, warmup_theta)        # (S, C, 17) draws
        >>> z = metric.inverse(warmup_theta.reshape(-1, 17))           # mean 0, covariance ~I
    """
    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.validation import check_finite_array

    draws = check_finite_array("theta_draws", np.asarray(theta_draws, np.float64))
    if draws.ndim < 2 or draws.size < 2 * draws.shape[-1]:
        raise ValueError(f"theta_draws must be (..., P) with at least 2 draws. Received: theta_draws.shape={draws.shape}")
    draws = draws.reshape(-1, draws.shape[-1])
    z = np.asarray(backend.to_numpy(bijector.inverse(backend.constant(draws))), np.float64)
    if z.shape != draws.shape or not np.all(np.isfinite(z)):
        raise ValueError(f"theta_draws must lie in the bijector's range, P = {z.shape[-1]} per draw. "
                         f"Received: theta_draws.shape={draws.shape}")
    return backend.tfp.bijectors.Chain([bijector, inf.preconditioner_from_draws(z, shrinkage=1.0)])


def _warmup_stages(n_warmup: int, windows: int = 1):
    """``(stages, final)``: the sweeps of the warm-up metrics' windows and of the warm-up after them.

    The first half of the warm-up is cut into ``windows`` windows, each twice as long as
    the one before (Stan's doubling windows); each adapts the steps over its first half
    and keeps its second half's draws for the metrics.  ``stages`` lists
    ``(adapt, draws)`` per window; the ``final`` sweeps re-adapt the steps in the last
    metrics.  All add up to ``n_warmup``.
    """
    first = n_warmup // 2
    weight = 2 ** windows - 1
    ends = [first * (2 ** (i + 1) - 1) // weight for i in range(windows)]
    lengths = np.diff([0] + ends).tolist()
    return [(m - m // 2, m // 2) for m in lengths], n_warmup - first


def _gibbs_chains_with_warmup_metric(config: Config, posterior, state0, field_scale, bias_bijector, offset: int,
                                     checkpoint_dir: Optional[Path], progress: bool, reduction=None):
    """Blocked chains whose bias metric, field scales or both are re-estimated from their own warm-up draws.

    The first half of the warm-up runs :func:`_gibbs_chains` in ``config.metric_windows``
    windows (:func:`_warmup_stages`), the first in the coordinates built at the start
    (``bias_bijector``: with ``bias_metric="warmup"``, the local-linear coordinates of
    :func:`local_linear_bias_bijector`; ``field_scale``).  The draws of each window's second
    half give the bias's dense metric (:func:`bias_metric_from_draws`, ``bias_metric="warmup"``)
    and the field's Fourier scales (:func:`tfhalo.field.precondition.scales_from_draws`,
    ``field_metric="warmup"``) for the next window, which starts from its last state.  The
    last stage runs the rest of the warm-up and the kept sweeps in the last window's
    coordinates (a fixed kernel, so the kept sweeps are exact).  Window ``i`` checkpoints into
    ``checkpoint_dir/warmup_metric`` (``_i`` appended from the second), so an interrupted run
    resumes any stage.

    Returns:
        ``(chains, info)``: the last stage's chains, with the windows' seconds and gradients
        added, and per re-estimated block an entry: ``"bias_metric"``, with the windows' sweeps
        and seconds, the last window's draws per chain, the per-window ``windows`` list, and the
        spread of the last window's bias draws along the principal directions of their
        covariance, in units of the start's curvature widths (``spread_max`` and ``spread_min``;
        1 where the start's Laplace map was right), and ``"field_metric"``, with the same sweeps,
        seconds and windows and the final scales per ``|k|`` shell in units of the start's
        (``spread_by_shell``, from the lowest ``|k|``; ``spread_min``, ``spread_max``).
    """
    import dataclasses

    from tfhalo import backend
    from tfhalo.field.precondition import k_shells, scales_from_draws

    n_field = posterior.n_field
    joint = backend.traced_once(posterior.log_prob)  # one trace of the joint for every stage's kernel
    windows, final = _warmup_stages(config.n_warmup, config.metric_windows)
    start_bijector, start_scale = bias_bijector, np.asarray(field_scale, np.float64)
    state = np.asarray(state0)
    seconds = gradients = divergent = 0
    per_window = []
    for i, (adapt, draws) in enumerate(windows):
        stage_dir = (None if checkpoint_dir is None
                     else Path(checkpoint_dir) / ("warmup_metric" if i == 0 else f"warmup_metric_{i + 1}"))
        window = _gibbs_chains(config, posterior, state, field_scale, bias_bijector, offset, stage_dir, progress,
                               n_warmup=adapt, n_samples=draws, seed=config.chains_seed + offset + 2000 + 100 * i,
                               joint=joint)
        samples = np.asarray(window.samples, np.float64)                                # (draws, C, P)
        if config.bias_metric == "warmup":
            theta = samples[..., n_field:]
            # Each window's metric from its own draws, in the start's coordinates: any fixed map keeps the
            # window after it exact, and the start's is the one the spread is reported in.
            bias_bijector = bias_metric_from_draws(start_bijector, theta)
        if config.field_metric == "warmup":
            field_scale, _ = scales_from_draws(field_scale, samples[..., :n_field])
        per_window.append({"sweeps": adapt + draws, "draws_per_chain": draws, "seconds": float(window.seconds)})
        seconds += window.seconds
        gradients += window.n_gradient_evaluations
        # The windows are warm-up of the run: their sweeps' divergences count as the warm-up's.
        divergent += window.n_warmup_divergent + int(np.sum(window.sample_stats["diverging"]))
        state = samples[-1]                                                             # (C, P) target coordinates

    def stage():  # each block's entry with its own copy of the windows
        return {"sweeps": sum(w["sweeps"] for w in per_window), "draws_per_chain": per_window[-1]["draws_per_chain"],
                "seconds": float(seconds), "windows": [dict(w) for w in per_window]}

    info = {}
    if config.bias_metric == "warmup":
        # The last window's draws' spread in the start's coordinates (unit curvature widths there): the square
        # roots of the eigenvalues of their covariance.
        z = np.asarray(backend.to_numpy(start_bijector.inverse(backend.constant(theta.reshape(-1, theta.shape[-1])))))
        spread = np.sqrt(np.clip(np.linalg.eigvalsh(np.atleast_2d(np.cov(z, rowvar=False))), 0.0, None))
        info["bias_metric"] = dict(stage(), spread_max=float(spread.max()), spread_min=float(spread.min()))
    if config.field_metric == "warmup":
        labels, _, counts = k_shells(config.n_grid)
        ratio = np.asarray(field_scale) / start_scale
        by_shell = np.bincount(labels.ravel(), weights=ratio.ravel(), minlength=counts.size) / counts
        info["field_metric"] = dict(stage(), spread_by_shell=by_shell[1:].tolist(),
                                    spread_min=float(by_shell.min()), spread_max=float(by_shell.max()))
    chains = _gibbs_chains(config, posterior, state, field_scale, bias_bijector, offset, checkpoint_dir, progress,
                           reduction, n_warmup=final, joint=joint)
    chains = dataclasses.replace(chains, seconds=chains.seconds + seconds,
                                 n_gradient_evaluations=chains.n_gradient_evaluations + gradients,
                                 n_warmup_divergent=chains.n_warmup_divergent + divergent)
    return chains, info


def local_linear_bias_bijector(posterior, state, return_rep: bool = False, scale_coordinate: str = "curvature"):
    """The neural bias study's coordinates for the bias, built on the LPT density of ``state (P,)``.

    ``theta = rep(v_0 + chol(H_v^-1) z)``: ``rep`` is
    :class:`~tfhalo.bias.reparam.LocalLinearReparametrization` of the bias likelihood on
    the start's density (any fixed bijection keeps the chains exact; this one makes the
    bias posterior given a typical field nearly Gaussian), ``H_v`` the Hessian of its
    Jacobian-corrected conditional at the start, curvatures floored at 1 (the scale of ``v``).

    Args:
        posterior: a :class:`~tfhalo.field.posterior.FieldLevelPosterior`.
        state: ``(P,)`` white noise and bias (``posterior.split`` order): the field whose LPT
            density the map is built on, and the bias at its centre.
        return_rep: also return the :class:`~tfhalo.bias.reparam.LocalLinearReparametrization`.
        scale_coordinate: ``"curvature"`` or ``"log_scale"`` (:data:`BIAS_SCALE_COORDINATES`;
            docs/sampling_coordinates.md, "Which scale coordinate").

    Returns:
        A float64 ``tfp.bijectors.Bijector`` ``z (..., n_bias) -> theta``, or ``(bijector, rep)``.

    Example:
        >>> bij = local_linear_bias_bijector(posterior, state0[0], scale_coordinate="log_scale")
        >>> chains = inf.sample(posterior.bias_conditional(log_density), theta0, config, bijector=bij)
    """
    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.bias.fit import hessian_of
    from tfhalo.bias.likelihood import NeuralBiasLikelihood
    from tfhalo.bias.reparam import LocalLinearReparametrization

    density = posterior.fields(np.asarray(state)[None])["density"][0]
    like = NeuralBiasLikelihood(posterior.model, posterior.catalogue.to_bias_data(density, posterior.density_floor),
                                prior_scale=posterior.prior_scale)
    theta = np.asarray(state[posterior.n_field:], np.float64)
    rep = LocalLinearReparametrization(like, theta, scale_coordinate=scale_coordinate)
    v0 = backend.to_numpy(rep.inverse(backend.constant(theta))).astype(np.float64)

    def target_v(v):
        return like.log_posterior(rep.forward(v)) + rep.forward_log_det_jacobian(v, event_ndims=1)

    h_v = hessian_of(target_v, v0)
    bijector = backend.tfp.bijectors.Chain([rep, inf.affine_preconditioner(v0, hessian=h_v, floor=1.0)])
    return (bijector, rep) if return_rep else bijector


def bias_given_fields_target(posterior, omega, n_chains: Optional[int] = None):
    """The log density of the bias given fixed white-noise fields, one per chain.

    Runs the forward model once, on ``omega``, and the NPE's convolution once
    (:meth:`tfhalo.field.posterior.FieldLevelPosterior.bias_conditional`); the returned
    function then evaluates only the bias model.

    Args:
        posterior: a :class:`tfhalo.field.posterior.FieldLevelPosterior`.
        omega: ``(C, n, n, n)`` or ``(C, n^3)`` white noise, one field per chain; or one field
            ``(n, n, n)`` / ``(n^3,)`` given to each of ``n_chains`` chains.
        n_chains: the chain count when ``omega`` is one field; None otherwise.

    Returns:
        ``theta (C, P) -> (C,)``, for :func:`sample_bias_given_fields`.

    Raises:
        ValueError: ``omega`` of another grid, non-finite, or ``n_chains`` that does not fit it.

    Example:
        >>> target = bias_given_fields_target(posterior, omega_true, n_chains=4)   # the true field, 4 chains
    """
    from tfhalo import backend
    from tfhalo.validation import check_finite_array

    n = round(posterior.n_field ** (1 / 3))
    omega = np.asarray(omega, np.float64)
    field_shapes = ((n ** 3,), (n, n, n))
    single = omega.shape in field_shapes
    if not single and not (omega.ndim in (2, 4) and omega.shape[0] >= 1 and omega.shape[1:] in field_shapes):
        raise ValueError(f"omega must be (C, {n}, {n}, {n}), (C, {n ** 3}) or one field of {n ** 3} values. "
                         f"Received: omega.shape={omega.shape}")
    check_finite_array("omega", omega)
    if single:
        n_chains = check_int("n_chains", n_chains, minimum=1)
        omega = np.broadcast_to(omega.reshape(1, n, n, n), (n_chains, n, n, n))
    elif n_chains is not None:
        raise ValueError(f"n_chains is for one field; omega already has {omega.shape[0]} chains. "
                         f"Received: n_chains={n_chains}")
    omega = np.ascontiguousarray(omega.reshape(-1, n, n, n))
    return posterior.bias_conditional(posterior.log_density(backend.constant(omega)))


def sample_bias_given_fields(target, theta_start, bijector, *, num_warmup: int, num_samples: int, seed: int,
                             max_tree_depth: Optional[int] = None, jit_compile: bool = True, progress: bool = False,
                             checkpoint_dir: Optional[Path] = None):
    """NUTS on the bias parameters alone, every chain's field held fixed.

    The bias block's settings (trees up to ``max_tree_depth``, by default :data:`BIAS_TREE_DEPTH`;
    dual averaging to :data:`BIAS_TARGET_ACCEPT`; windowed mass-matrix adaptation), so that the
    study's pilot (``bias_coordinates="pilot"``) and the benchmarks that sample the bias given the
    true field (``benchmarks/bias_scale_coordinate.py``) run the same sampler.  Only the bias model
    is evaluated: the fields' LPT densities are in ``target``.

    Args:
        target: ``theta (C, P) -> (C,)``, the log density of the bias given each chain's field,
            from :func:`bias_given_fields_target`.
        theta_start: ``(C, P)`` starting bias parameters, one row per chain.
        bijector: the bias's sampling coordinates (e.g. :func:`local_linear_bias_bijector`).
        num_warmup, num_samples: iterations per chain.
        seed: the chains' seed.
        max_tree_depth: NUTS's tree depth cap; None: :data:`BIAS_TREE_DEPTH`.
        jit_compile: compile the chains with XLA.
        progress: show a progress bar.
        checkpoint_dir: resumable checkpoints there, or None.

    Returns:
        :class:`tfhalo.inference.Chains` of ``theta``, samples ``(num_samples, C, P)``.

    Example:
        >>> chains = sample_bias_given_fields(bias_given_fields_target(posterior, omega), theta0,
        ...                                   local_linear_bias_bijector(posterior, state),
        ...                                   num_warmup=300, num_samples=300, seed=7)
    """
    theta_start = np.asarray(theta_start, np.float64)
    if theta_start.ndim != 2:
        raise ValueError(f"theta_start must be (chains, parameters). Received: theta_start.shape={theta_start.shape}")
    import tfhalo.inference as inf

    if max_tree_depth is None:  # read here, not bound at definition, so that the constant is the one setting
        max_tree_depth = BIAS_TREE_DEPTH

    sampler = inf.SamplerConfig(kernel="nuts", num_chains=int(theta_start.shape[0]), num_warmup=num_warmup,
                                num_samples=num_samples, target_accept=BIAS_TARGET_ACCEPT,
                                max_tree_depth=max_tree_depth, seed=seed, jit_compile=jit_compile)
    return inf.sample(target, theta_start, sampler, bijector=bijector, progress=progress,
                      checkpoint_dir=checkpoint_dir)


def _pilot_bias_bijector(config: Config, posterior, state0, seed: int, checkpoint_dir: Optional[Path],
                         progress: bool):
    """The bias's coordinates from a pilot run of the bias given each chain's starting field.

    ``theta = rep(mean + chol(Sigma) z)``: ``rep`` is the local-linear map of
    :func:`local_linear_bias_bijector` and ``Sigma`` the regularised covariance of the
    pilot's draws in its coordinates (:func:`tfhalo.inference.preconditioner_from_draws`).
    The pilot is NUTS (trees up to depth :data:`BIAS_TREE_DEPTH`, dual averaging to
    :data:`BIAS_TARGET_ACCEPT`) on ``p(theta | field)`` with every chain's field held at its
    start, ``n_bias_pilot`` warm-up iterations and as many draws per chain.  It evaluates
    the bias model on the fixed LPT densities only, no forward model.  Given a field, the
    bias posterior spreads along combinations of the 17 parameters tens to hundreds of
    times its curvature widths at the start; a dense metric from draws follows those
    directions, which neither a diagonal scale nor the start's Hessian can.  Any fixed
    bijection keeps the joint chains exact; this one is fixed before they start.

    Returns:
        ``(bijector, pilot)``: the bias block's bijector and the pilot's
        :class:`tfhalo.inference.Chains`.
    """
    import tfhalo.inference as inf
    from tfhalo import backend

    n_field = posterior.n_field
    local, rep = local_linear_bias_bijector(posterior, state0[0], return_rep=True,
                                             scale_coordinate=config.bias_scale_coordinate)
    target = bias_given_fields_target(posterior, np.asarray(state0)[:, :n_field])
    pilot = sample_bias_given_fields(target, state0[:, n_field:], local, num_warmup=config.n_bias_pilot,
                                     num_samples=config.n_bias_pilot, seed=seed, jit_compile=config.jit_compile,
                                     progress=progress,
                                     checkpoint_dir=checkpoint_dir)
    draws = pilot.samples.reshape(-1, posterior.n_bias)
    draws_v = np.asarray(backend.to_numpy(rep.inverse(backend.constant(draws))), np.float64)
    return backend.tfp.bijectors.Chain([rep, inf.preconditioner_from_draws(draws_v)]), pilot


def _setting_analysis(config: Config, setting: str, sim, posterior, chains, omega_true, out: Path,
                      theta_true=None) -> dict:
    """Everything a setting reports, its saved samples and its figures.

    ``theta_true``: the bias parameters the catalogue was drawn with (a mock's), or None.
    """
    import arviz as az
    import xarray as xr

    import tfhalo.inference as inf
    from tfhalo.bias.fields import density_field
    from tfhalo.field import analysis as fa

    n, n_field, n_bias = config.n_grid, posterior.n_field, posterior.n_bias
    cosmology = sim.cosmology
    box = sim.box_size
    samples = np.asarray(chains.samples)            # (S, C, P), or (S, C, n_bias) with the field thinned
    s, c, _ = samples.shape
    theta = samples[..., -n_bias:]
    # The white noise every thin-th draw, its mean over all draws and every draw's power: kept by the
    # chains (keep_field_draws=False) or cut here from every draw, the same either way.
    thinned = chains.thinned
    if thinned is None:
        reduction = field_reduction(config, posterior.forward)
        thinned = reduction.join([reduction.reduce_block(samples[..., :n_field], 0)], s)
    omega = thinned.samples.reshape(-1, c, n, n, n)  # (S', C, n, n, n), draws thinned.index
    pooled = omega.reshape(-1, n, n, n)
    power = thinned.summaries["power"].reshape(s * c, -1)

    bins = fa.k_bins(n, box, n_bins=config.n_bins)
    cover = _white_noise_coverage(omega, omega_true, bins)

    delta_true = linear_fields(omega_true, box, cosmology)
    power_true = fa.binned_power(delta_true, bins)[0]
    prior_power = _prior_binned_power(bins, cosmology)
    saved_delta = np.empty_like(pooled)
    for i in range(0, pooled.shape[0], 64):
        saved_delta[i:i + 64] = linear_fields(pooled[i:i + 64], box, cosmology)
    # The linear field is linear in the white noise: its posterior mean is the mean's.
    mean_delta = linear_fields(thinned.mean.mean(axis=0).reshape(1, n, n, n), box, cosmology)[0]
    r = fa.cross_correlation(mean_delta, delta_true, bins)
    post_mean_power = power.mean(axis=0)
    cv = prior_power * np.sqrt(2.0 / bins.n_modes)
    power_z = (post_mean_power - prior_power) / cv

    # Convergence of the bias parameters and of the power in the lowest k bins.
    idata = chains.to_inference_data(variables={"bias": (slice(samples.shape[-1] - n_bias, None), (n_bias,))})
    low = power.reshape(s, c, -1)[:, :, :N_LOW_K_BINS].transpose(1, 0, 2)
    idata.posterior["power_low_k"] = xr.DataArray(
        low, dims=("chain", "draw", "low_k_bin"), coords={"low_k_bin": np.arange(low.shape[-1])})
    bias_dim = idata.posterior["bias"].dims[-1]
    idata.posterior = idata.posterior.rename({bias_dim: "parameter"}).assign_coords(
        parameter=[name.split("/", 1)[-1] for name in posterior.parameter_names()])
    fixed = setting in FIXED_BIAS_SETTINGS
    # A fixed bias has no R-hat or ESS: only the power is checked then.
    convergence = inf.convergence_summary(idata, var_names=["power_low_k"] if fixed else None)
    inf.save_inference_data(idata, out / POSTERIOR_FILE)
    # the sampler counts gradients per chain; the ESS pools the chains
    n_grad = float(chains.n_gradient_evaluations) * c
    ess_bias = None if fixed else min(v["ess_bulk"] for k, v in convergence["parameters"].items()
                                      if k.startswith("bias"))
    ess_power = min(v["ess_bulk"] for k, v in convergence["parameters"].items() if k.startswith("power"))
    identification = None if fixed else bias_identification(idata, convergence, posterior.prior_scale, theta_true)

    # Final density and psi over saved draws spread through the chains (Fig. 5), one draw for Fig. 4.
    picks = np.linspace(0, pooled.shape[0] - 1, min(config.n_field_draws, pooled.shape[0])).astype(int)
    flat_states = np.concatenate([pooled.reshape(-1, n_field)[picks],
                                  theta[thinned.index].reshape(-1, n_bias)[picks]], axis=1)
    moments = {}
    for name in ("density", "psi"):
        moments[name] = [np.zeros((n, n, n)), np.zeros((n, n, n))]
    example = None
    for j in range(0, len(picks), config.n_chains):
        batch = flat_states[j:j + config.n_chains]
        f = posterior.fields(batch)
        for name in ("density", "psi"):
            values = np.asarray(f[name], np.float64)
            if values.ndim == 5:
                values = values[..., 0]
            moments[name][0] += values.sum(axis=0)
            moments[name][1] += (values**2).sum(axis=0)
        if example is None:
            example = {k: np.asarray(v, np.float64)[0] for k, v in f.items()}
    k_draws = len(picks)
    maps = {}
    for name, (m1, m2) in moments.items():
        mean = m1 / k_draws
        maps[name] = (mean, np.maximum(m2 / k_draws - mean**2, 0.0))
    true_density = density_field(sim, n, "nbody")

    _save_samples(out / SAMPLES_FILE, config, omega, saved_delta, theta, omega_true, delta_true, posterior, box)
    figures = _setting_figures(out, setting, bins, prior_power, power, power_true, r, cover, maps, true_density,
                               example, posterior, config)
    k_half = fa.k_at_correlation(bins.centres, r, 0.5)
    return {
        "n_halos": int(posterior.catalogue.positions.shape[0]),
        "k": bins.centres.tolist(),
        "n_modes": bins.n_modes.tolist(),
        "power": {"prior": prior_power.tolist(), "truth": power_true.tolist(),
                  "posterior_mean": post_mean_power.tolist(),
                  "posterior_16": np.percentile(power, 16, axis=0).tolist(),
                  "posterior_84": np.percentile(power, 84, axis=0).tolist(),
                  "cosmic_variance_sd": cv.tolist(), "z_vs_prior": power_z.tolist(),
                  "consistent_with_prior": bool(np.all(np.abs(power_z) <= POWER_SIGMA_MAX))},
        "cross_correlation": {"r": r.tolist(), "r_largest_scale": float(r[0]), "k_r_half": k_half},
        "coverage": cover,
        "calibrated": _within(cover, "z_expected"),
        "calibrated_nominal": _within(cover, "z"),
        "convergence": jsonable(convergence),
        "bias_identification": identification,
        "sampler": {"seconds": float(chains.seconds), "n_gradient_evaluations": n_grad,
                    "step_size": np.asarray(chains.step_size, np.float64).reshape(-1).tolist(),
                    "acceptance_rate": float(np.mean(chains.sample_stats["acceptance_rate"])),
                    "gradients_per_ess_bias": None if ess_bias is None else n_grad / max(ess_bias, 1e-9),
                    "gradients_per_ess_power_low_k": n_grad / max(ess_power, 1e-9),
                    "n_divergent": int(np.sum(chains.sample_stats["diverging"])),
                    "blocks": _block_stats(chains.sample_stats)},
        "figures": figures,
    }


def _within(cover: dict, key: str) -> bool:
    """Whether every bin of every level of a coverage dict has ``|cover[key]| <= COVERAGE_Z_MAX``."""
    return bool(all(np.all(np.abs(np.asarray(v[key])) <= COVERAGE_Z_MAX) for v in cover["levels"].values()))


def coverage_z(level_entry: dict) -> list:
    """A coverage level's z per k bin against an exact sampler's expectation (``z_expected``).

    Results written before the expectation existed hold only ``z`` (against the nominal
    level), which is returned for them.
    """
    return level_entry.get("z_expected", level_entry["z"])


def bias_identification(idata, convergence: dict, prior_sd: float, theta_true=None) -> dict:
    """How far the catalogue narrows each bias parameter's prior, and where a mock's truth falls.

    :func:`tfhalo.inference.posterior_contraction` of the ``bias`` draws in ``idata``
    (chains pooled), with the Monte Carlo standard errors of ``convergence`` (a
    :func:`tfhalo.inference.convergence_summary` of it) propagated.  Parameters whose
    contraction is below ``1 - WEAK_CONTRACTION`` are listed as weakly identified: their
    posterior is still nearly the prior's ``N(0, prior_sd^2)``, a direction as wide as the
    prior that a chain crosses with steps set by the well-determined ones.

    Args:
        idata: ``arviz.InferenceData`` whose posterior has ``bias (chain, draw, parameter)``.
        convergence: its convergence summary (labels ``bias[<parameter>]``).
        prior_sd: the bias prior's standard deviation.
        theta_true: optional ``(n_bias,)`` generating values (a mock's).

    Returns:
        JSON-ready dict: ``parameters`` (names), ``prior_sd``, the lists of
        :func:`~tfhalo.inference.posterior_contraction`, ``weakly_identified`` (names),
        and ``max_abs_z``, ``max_abs_z_parameter`` and ``max_abs_z_se`` (its MCSE), None
        without a truth.
    """
    import tfhalo.inference as inf

    names = [str(p) for p in idata.posterior["parameter"].values]
    draws = np.asarray(idata.posterior["bias"].values, np.float64)                # (C, S, n_bias)
    rows = [convergence["parameters"][f"bias[{name}]"] for name in names]
    out = inf.posterior_contraction(draws, prior_sd, truth=theta_true,
                                    mcse_mean=[r["mcse_mean"] for r in rows], mcse_sd=[r["mcse_sd"] for r in rows])
    weak = [name for name, c in zip(names, out["contraction"]) if c < 1.0 - WEAK_CONTRACTION]
    worst = None
    if out["z"] is not None and np.any(np.isfinite(out["z"])):
        abs_z = np.abs(np.asarray(out["z"]))
        worst = int(np.argmax(np.where(np.isfinite(abs_z), abs_z, -1.0)))
    return jsonable({"parameters": names, "prior_sd": float(prior_sd), **out, "weakly_identified": weak,
                     "max_abs_z": None if worst is None else abs(out["z"][worst]),
                     "max_abs_z_parameter": None if worst is None else names[worst],
                     "max_abs_z_se": None if worst is None or out["z_se"] is None else out["z_se"][worst]})


def _block_stats(stats) -> Optional[dict]:
    """The blocked sampler's acceptance, divergences and step size per block (None for one joint kernel).

    Blocks whose kernel has no acceptance ratio (the slice sampler) are left out.
    """
    blocks = {name: {"acceptance_rate": float(np.mean(stats[f"acceptance_rate_{i}"])),
                     "n_divergent": int(np.sum(stats[f"diverging_{i}"])),
                     "step_size": float(np.mean(stats[f"step_size_{i}"]))}
              for i, name in enumerate(("field", "bias")) if f"acceptance_rate_{i}" in stats}
    return blocks or None


def _save_samples(path: Path, config, omega, saved_delta, theta, omega_true, delta_true, posterior, box):
    """Thinned white-noise and linear-density draws, bias draws, truth and data in one HDF5 file (atomic).

    ``omega``: ``(S', C, n, n, n)`` the white noise at every ``thin``-th draw; ``saved_delta``
    their linear fields, pooled ``(S' * C, n, n, n)``.
    """
    import h5py

    thin = config.thin
    delta = saved_delta.reshape(omega.shape)
    cat = posterior.catalogue
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["description"] = ("tfhalo field-level posterior: thinned draws (draw, chain, x, y, z) of the "
                                      "white noise and the linear density at a = 1; all bias draws; the truth "
                                      "Fourier-truncated to the inference grid; the halo catalogue")
            f.attrs["box_size"] = box
            f.attrs["n_grid"] = config.n_grid
            f.attrs["thin"] = thin
            f.attrs["cosmology"] = str(posterior.forward.cosmology.to_dict())
            f.create_dataset("omega", data=omega.astype(np.float32), compression="gzip", compression_opts=1)
            f.create_dataset("delta_lin", data=delta.astype(np.float32), compression="gzip", compression_opts=1)
            f.create_dataset("theta", data=theta)
            f["theta"].attrs["names"] = np.array(posterior.parameter_names(), dtype="S")
            f.create_dataset("truth/omega", data=omega_true)
            f.create_dataset("truth/delta_lin", data=np.reshape(delta_true, omega_true.shape))
            f.create_dataset("data/halo_positions", data=np.asarray(cat.positions))
            f.create_dataset("data/halo_ln_mass", data=np.asarray(cat.ln_mass))
            f["data"].attrs["log_mass_threshold"] = float(cat.log_mass_threshold)


def _setting_figures(out, setting, bins, prior_power, power, power_true, r, cover, maps, true_density, example,
                     posterior, config) -> dict:
    from tfhalo.evaluation.plots import save_figure
    import matplotlib.pyplot as plt

    k = bins.centres
    figs = {}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    cv = prior_power * np.sqrt(2.0 / bins.n_modes)
    ax.fill_between(k, prior_power - 2 * cv, prior_power + 2 * cv, color="0.85", label="prior, 2 sigma cosmic variance")
    ax.plot(k, prior_power, "k-", label="prior P(k)")
    ax.plot(k, power_true, "r--", label="truth")
    lo, hi = np.percentile(power, [2.5, 97.5], axis=0)
    ax.fill_between(k, lo, hi, color="C0", alpha=0.35, label="posterior 95%")
    ax.plot(k, power.mean(axis=0), "C0-", label="posterior mean")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k [h/Mpc]")
    ax.set_ylabel("P(k) [(Mpc/h)^3]")
    ax.set_title(f"Initial power spectra ({setting})")
    ax.legend(fontsize=8)
    figs["power_spectra"] = save_figure(fig, out / "fig6_power_spectra.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(k, r, "o-")
    axes[0].axhline(0.9, color="0.6", ls=":")
    axes[0].axhline(0.5, color="0.6", ls="--")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("k [h/Mpc]")
    axes[0].set_ylabel("r(k)")
    axes[0].set_title("posterior mean vs true initial field")
    for level, v in cover["levels"].items():
        frac, err = np.asarray(v["fraction"]), np.asarray(v["stderr"])
        axes[1].errorbar(k, frac, yerr=err, fmt="o-", label=f"{float(level):.0%} intervals")
        axes[1].axhline(float(level), color="0.6", ls=":")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("k [h/Mpc]")
    axes[1].set_ylabel("fraction of true modes inside")
    axes[1].set_title("coverage of the true white noise")
    axes[1].legend(fontsize=8)
    figs["correlation_coverage"] = save_figure(fig, out / "cross_correlation_coverage.png")

    z = config.n_grid // 2
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    panels = [
        (np.log10(np.maximum(true_density[z], 1e-2)), "true N-body log10(1+delta)"),
        (np.log10(np.maximum(maps["density"][0][z], 1e-2)), "posterior mean LPT log10(1+delta)"),
        (maps["density"][1][z], "posterior variance of LPT 1+delta"),
        (maps["psi"][0][z], "posterior mean psi"),
        (maps["psi"][1][z], "posterior variance of psi"),
        (np.log10(np.maximum(true_density[z], 1e-2)) - np.log10(np.maximum(maps["density"][0][z], 1e-2)),
         "true minus posterior mean (log10)"),
    ]
    for ax, (img, title) in zip(axes.ravel(), panels):
        im = ax.imshow(img.T, origin="lower", cmap="viridis")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    figs["final_density"] = save_figure(fig, out / "fig5_final_density.png")

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    halo_mass = posterior.catalogue.halo_mass_field()
    psi = example["psi"][..., 0] if example["psi"].ndim == 4 else example["psi"]
    panels = [(example["delta_lin"][z], "initial field delta_L"),
              (np.log10(np.maximum(example["density"][z], 1e-2)), "LPT log10(1+delta)"),
              (psi[z], "NPE output psi"),
              (np.log10(np.maximum(halo_mass[z], 1.0)), "halo mass field log10 M")]
    for ax, (img, title) in zip(axes, panels):
        im = ax.imshow(img.T, origin="lower", cmap="viridis")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    figs["one_sample"] = save_figure(fig, out / "fig4_one_sample.png")
    return {k: Path(v).name for k, v in figs.items()}


# -- the study -------------------------------------------------------------------------------------------------


#: Config fields that change only how many of the chains' draws are kept and analysed, not the draws
#: themselves: they stay out of the chains' checkpoint key, so a larger ``n_samples`` extends the chains.
#: Without ``keep_field_draws`` the chains keep the white noise every ``thin``-th draw and its power in
#: ``n_bins`` bins, so those two then belong to the chains (:func:`_extendable_fields`).
EXTENDABLE_FIELDS = ("n_samples", "thin", "n_field_draws", "n_bins")


def _extendable_fields(config: dict) -> tuple:
    if config.get("keep_field_draws", True):
        return EXTENDABLE_FIELDS
    return tuple(k for k in EXTENDABLE_FIELDS if k not in ("thin", "n_bins"))


def _setting_key(config: Config, setting: str, sim_fp: str) -> dict:
    # Settings a run does not use stay out of its key, so that changing them reuses it.
    if setting in FIXED_BIAS_SETTINGS:
        config = dataclasses.replace(config, **{f.name: f.default for f in dataclasses.fields(Config)
                                                if f.name in FIXED_BIAS_UNUSED})
    unused = {"name", "settings", "devices", "keep_checkpoint", "workers"}
    if config.keep_field_draws:  # the default, which keys written before it existed stand for
        unused.add("keep_field_draws")
    if config.sampler != "gibbs":
        unused |= {"bias_kernel", "bias_steps"}
    if config.bias_carry == "none":  # the default, which keys written before it existed stand for
        unused.add("bias_carry")
    if config.bias_min_step_factor == 1.0:  # the same
        unused.add("bias_min_step_factor")
    if config.n_components == 2:  # the same
        unused.add("n_components")
    if config.forward_dtype == "float64":  # the same
        unused.add("forward_dtype")
    if config.bias_metric == "start":  # the same
        unused.add("bias_metric")
    if config.field_metric == "start":  # the same
        unused.add("field_metric")
    if config.metric_windows == 1:  # the same
        unused.add("metric_windows")
    if config.bias_scale_coordinate == "curvature":  # the same
        unused.add("bias_scale_coordinate")
    if config.bias_coordinates != "pilot":
        unused.add("n_bias_pilot")
    keep = {k: v for k, v in config.to_dict().items() if k not in unused}
    return dict(step="setting", setting=setting, simulation=sim_fp, config=keep)


def _chains_key(key: dict) -> dict:
    """A setting key less :data:`EXTENDABLE_FIELDS`: what the chains' checkpoint depends on."""
    extendable = _extendable_fields(key["config"])
    return dict(key, config={k: v for k, v in key["config"].items() if k not in extendable})


def _checkpoint_dir(cache) -> Path:
    """A setting's chain checkpoint: keyed by the chains' settings, so that an interrupted run with other
    settings (another bias kernel, say) is never resumed as this one, and one with other n_samples is."""
    from tfhalo.studies.common import fingerprint

    return cache.directory / "checkpoint" / fingerprint(_chains_key(cache.key))[:16]


def _extends(cache) -> bool:
    """Whether the cached setting differs from this run's only in :data:`EXTENDABLE_FIELDS` and its chains'
    checkpoint was kept: the chains are then extended (or re-read) and the analysis redone.  Without a kept
    checkpoint such a change is refused like any other (``overwrite`` discards the old result)."""
    stored = cache.stored_key("setting.json")
    return (isinstance(stored, dict) and isinstance(stored.get("config"), dict) and stored != cache.key
            and _chains_key(stored) == _chains_key(cache.key) and _checkpoint_dir(cache).is_dir())


# The sampler set-up of the settings last run in this process: the posterior, the chains' start, the
# preconditioner's scales and the joint chains' bijector. A later run of the same chains (another
# n_samples, thin or keep_field_draws: an extension, a re-analysis) takes them from here, and with them
# the compiled chains that tfhalo.inference keeps for that target and bijector, instead of building and
# tracing them again. Small: an entry holds its forward model and catalogue alive.
_SETUPS: collections.OrderedDict = collections.OrderedDict()
_SETUPS_SIZE = 2


def _setup_memo(cache, theta_fit) -> dict:
    """The reusable set-up of the chains ``cache`` (a setting's cache) stands for, given the bias fit."""
    from tfhalo.studies.common import fingerprint

    key = _chains_key(cache.key)
    # What the chains keep of each draw does not change the chains.
    key = dict(key, config={k: v for k, v in key["config"].items() if k != "keep_field_draws"},
               theta_fit=np.asarray(theta_fit, np.float64))
    fp = fingerprint(key)
    memo = _SETUPS.setdefault(fp, {})
    _SETUPS.move_to_end(fp)
    while len(_SETUPS) > _SETUPS_SIZE:
        _SETUPS.popitem(last=False)
    return memo


def _cached_setting(cache, extended: bool) -> Optional[dict]:
    """A setting's finished result from its cache, or None when its chains are still to run (or extended)."""
    if extended or not (cache.directory / SAMPLES_FILE).is_file():
        return None
    return cache.load("setting.json")


def _sample_and_analyse(config: Config, setting: str, out: Path, extended: bool, overwrite: bool, progress: bool, *,
                        sim, sim_fp, omega_true, model, theta_fit, forward, data_forward) -> dict:
    """One setting's chains sampled (resumably), analysed and cached: its result dict."""
    from tfhalo.field.posterior import FieldLevelPosterior
    from tfhalo.studies import common

    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    sdir = out / setting
    cache = common.Cache(sdir, _setting_key(config, setting, sim_fp), overwrite=overwrite)
    sdir.mkdir(parents=True, exist_ok=True)
    memo = _setup_memo(cache, theta_fit)
    if "posterior" not in memo:
        catalogue = _catalogue(config, setting, sim, data_forward, model, omega_true, theta_fit)
        memo["posterior"] = FieldLevelPosterior(forward, model, catalogue)
    posterior = memo["posterior"]
    say(f"[{setting}] {posterior.catalogue.positions.shape[0]} halos; {posterior.size} parameters; "
        f"chains start from the {config.start}"
        + ("; the cached run had other n_samples/thin/n_field_draws/n_bins: its kept checkpoint is "
           "extended or re-read" if extended else ""))
    chains, setup = _sample_setting(config, setting, posterior, theta_fit, _checkpoint_dir(cache), progress, memo)
    result = _setting_analysis(config, setting, sim, posterior, chains, omega_true, sdir,
                               theta_true=theta_fit if setting in MOCK_SETTINGS else None)
    result["sampler"].update(setup)
    result["sampler"]["bias_spread"] = None if setting in FIXED_BIAS_SETTINGS else bias_spread(
        np.asarray(chains.samples)[..., -posterior.n_bias:], setup["bias_scale"])
    result["start"] = config.start
    result["preconditioner"] = config.preconditioner
    result = jsonable(result)
    cache.save("setting.json", result)
    if not config.keep_checkpoint:
        shutil.rmtree(sdir / "checkpoint", ignore_errors=True)
    return result


def _forward_models(config: Config, sim):
    """``(forward, data_forward)``: the chains' forward model and the one the mocks are drawn with.

    The mocks are drawn with the float64 model whatever the chains compute in, so that both
    arithmetics see the same catalogue.
    """
    forward = forward_model(config, sim)
    return forward, (forward if config.forward_dtype == "float64" else forward_model(config, sim, dtype="float64"))


def _setting_in_process(config: Config, suite: Path, out: Path, setting: str, extended: bool, overwrite: bool,
                        progress: bool):
    """:func:`_sample_and_analyse` in a process of its own (:func:`~tfhalo.studies.common.map_in_processes`):
    ``(result, seconds)``.  The simulation and the bias fit are read from the caches the parent wrote."""
    t0 = time.perf_counter()
    sim, _ = _load_simulation(config, suite, progress=False)
    model, _, fit = _bias_fit(config, sim, out, progress=False, overwrite=overwrite)
    forward, data_forward = _forward_models(config, sim)
    from tfhalo.studies import common

    result = _sample_and_analyse(config, setting, out, extended, overwrite, progress, sim=sim,
                                 sim_fp=common.fingerprint(sim.initial_density),
                                 omega_true=truth_white_noise(sim, config.n_grid), model=model,
                                 theta_fit=np.asarray(fit["theta"], np.float64), forward=forward,
                                 data_forward=data_forward)
    return result, time.perf_counter() - t0


def run(config: Config, suite, out, progress: bool = True, overwrite: bool = False) -> dict:
    """Run the study (resumable) and write ``out/results.json``, ``report.md``, figures and samples.

    Args:
        config: a :class:`Config`.
        suite: suite directory of the one N-body run (generated there when missing).
        out: output directory; each setting writes into ``out/<setting>/``.
        progress: progress bars and one line per step.
        overwrite: discard cached steps made with other settings instead of raising
            :class:`~tfhalo.studies.common.StaleCacheError`.

    Returns:
        The results dict (also ``out/results.json``).
    """
    from tfhalo.studies import common

    if not isinstance(config, Config):
        raise ValueError(f"config must be a field_level.Config. Received: config={type(config).__name__}")
    suite, out = common.check_run_paths(suite, out)
    from tfhalo.inference import check_chain_devices

    check_chain_devices(config.sampler_config())  # the backend and the machine can hold config.devices
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    t_start = time.perf_counter()
    timings = {}

    sim, sim_path = _load_simulation(config, suite, progress)
    sim_fp = common.fingerprint(sim.initial_density)
    extends = {}  # setting -> whether its kept chains are extended (decided once, before any work)
    for setting in config.settings:
        cache = common.Cache(out / setting, _setting_key(config, setting, sim_fp), overwrite=overwrite)
        extends[setting] = _extends(cache)
        if not extends[setting]:
            cache.check("setting.json")
    out.mkdir(parents=True, exist_ok=True)
    timings["simulation_s"] = time.perf_counter() - t_start
    omega_true = truth_white_noise(sim, config.n_grid)

    t0 = time.perf_counter()
    model, data, fit = _bias_fit(config, sim, out, progress, overwrite)
    timings["bias_fit_s"] = time.perf_counter() - t0
    theta_fit = np.asarray(fit["theta"], np.float64)
    say(f"{data.n_halos} halos above {config.threshold_mass:.3g} Msun/h on a {config.n_grid}^3 grid; bias fit to "
        f"the N-body field: ln posterior {float(fit['log_posterior']):.2f}")
    forward, data_forward = _forward_models(config, sim)

    inputs = dict(sim=sim, sim_fp=sim_fp, omega_true=omega_true, model=model, theta_fit=theta_fit, forward=forward,
                  data_forward=data_forward)
    settings, todo = {}, []
    for setting in config.settings:
        cache = common.Cache(out / setting, _setting_key(config, setting, sim_fp), overwrite=overwrite)
        settings[setting] = _cached_setting(cache, extends[setting])
        timings[f"{setting}_s"] = 0.0
        if settings[setting] is None:
            todo.append(setting)
    timings["settings_at_once"] = min(config.workers, len(todo)) if todo else 1
    if config.workers > 1 and len(todo) > 1:
        say(f"settings {', '.join(todo)} in {min(config.workers, len(todo))} processes at once")
        calls = [(config, suite, out, setting, extends[setting], overwrite, progress) for setting in todo]
        for setting, (result, seconds) in zip(todo, common.map_in_processes(_setting_in_process, calls,
                                                                            config.workers)):
            settings[setting], timings[f"{setting}_s"] = result, seconds
    else:
        for setting in todo:
            t0 = time.perf_counter()
            settings[setting] = _sample_and_analyse(config, setting, out, extends[setting], overwrite, progress,
                                                    **inputs)
            timings[f"{setting}_s"] = time.perf_counter() - t0
    for setting, result in settings.items():
        conv = result["convergence"]
        say(f"[{setting}] r(k_min) = {_fmt(result['cross_correlation']['r_largest_scale'])}, coverage "
            f"{'calibrated' if result['calibrated'] else 'NOT calibrated'}, P(k) "
            f"{'consistent' if result['power']['consistent_with_prior'] else 'NOT consistent'} with the prior; "
            f"max R-hat {_fmt(conv['max_rhat'])}, min bulk ESS {_fmt(conv['min_ess_bulk'], '.0f')}, "
            f"{conv['n_divergent']} divergences")
    timings["total_s"] = time.perf_counter() - t_start

    results = {
        "study": "field_level",
        "config": config.to_dict(),
        "seed": config.seed,
        "machine": common.machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "simulation": {"path": str(sim_path), "n_side": int(sim.initial_density.shape[0]), "box_size": sim.box_size,
                       "particle_mass": float(sim.particle_mass)},
        "data": {"n_halos_nbody": int(data.n_halos), "threshold_mass": config.threshold_mass,
                 "threshold_particles": config.threshold_mass / float(sim.particle_mass),
                 "n_field_parameters": config.n_grid**3, "n_bias_parameters": int(theta_fit.size)},
        "bias_fit": {"theta": theta_fit.tolist(), "log_posterior": float(fit["log_posterior"])},
        "criteria": {"coverage_z_max": COVERAGE_Z_MAX, "coverage_reference": "exact_sampler_expectation",
                     "power_sigma_max": POWER_SIGMA_MAX, "r_largest_scale_min": 0.9},
        "settings": settings,
        "figures": {f"{setting}: {caption.replace('_', ' ')}": f"{setting}/{name}"
                    for setting, s in settings.items() for caption, name in s["figures"].items()},
        "timings": timings,
    }
    results["summary"] = _summary_rows(results)
    results = jsonable(results)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", report(results))
    say(f"wrote {out / 'results.json'} and {out / 'report.md'} in {timings['total_s']:.0f} s")
    return results


def _summary_rows(r: dict) -> list:
    from tfhalo.studies.common import summary_row

    rows = []
    for setting, s in r["settings"].items():
        cover = s["coverage"]["levels"]
        for level, v in cover.items():
            frac = np.asarray(v["fraction"], float)
            z = np.asarray(coverage_z(v), float)
            note = f"fractions {', '.join(f'{x:.3f}' for x in frac)}"
            if "expected" in v:
                note += (f"; an exact sampler's expectation {', '.join(f'{x:.3f}' for x in v['expected'])}; "
                         f"against {float(level):.0%} itself max |z| {float(np.max(np.abs(v['z']))):.2f}")
            rows.append(summary_row(f"{setting}: {float(level):.0%} coverage, max |z| over k bins",
                                    float(np.max(np.abs(z))), None, None, note=note))
        rows.append(summary_row(f"{setting}: r(k) at the largest scale", s["cross_correlation"]["r_largest_scale"]))
        rows.append(summary_row(f"{setting}: k where r = 0.5 [h/Mpc]", s["cross_correlation"]["k_r_half"]))
        c = s["convergence"]
        what = "low-k power" if s["sampler"].get("bias_fixed") else "bias, low-k power"
        rows.append(summary_row(f"{setting}: max R-hat ({what})", c["max_rhat"]))
        rows.append(summary_row(f"{setting}: min bulk ESS ({what})", c["min_ess_bulk"]))
        rows.append(summary_row(f"{setting}: gradients per effective sample (low-k power)",
                                s["sampler"]["gradients_per_ess_power_low_k"]))
        ident = s.get("bias_identification")
        if ident is not None:
            rows.append(summary_row(
                f"{setting}: bias parameters weakly identified (contraction < {1 - WEAK_CONTRACTION:g})",
                len(ident["weakly_identified"]), note=", ".join(ident["weakly_identified"]) or "none"))
            if ident.get("max_abs_z") is not None:
                rows.append(summary_row(
                    f"{setting}: generating bias, max |posterior z| over parameters", ident["max_abs_z"],
                    ident["max_abs_z_se"], "MCSE", note=f"at {ident['max_abs_z_parameter']}"))
        spread = s["sampler"].get("bias_spread")
        if spread is not None:
            rows.append(summary_row(
                f"{setting}: bias draws' sd / conditional width (median over parameters)", spread["median"],
                note=f"range {spread['min']:.3g}-{spread['max']:.3g}; a lower bound while R-hat is high"))
    return rows


def _fmt(x, spec=".3f"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def _head_text(cfg: dict) -> str:
    n = cfg.get("n_components", 2)
    if n == 2:
        return ""
    return f" (a mixture head of {n} Gaussian{'s' if n > 1 else ''}; the paper's has 2)"


def _sampler_text(cfg: dict) -> str:
    """``"HMC chains"``, or the blocked sampler's blocks (bias kernel, moves per sweep, carry)."""
    if cfg.get("sampler", "joint") != "gibbs":
        return "HMC chains"
    carry = cfg.get("bias_carry", "none")
    moved = "carrying the bias (NPE pre-activation moments held)" if carry == "npe_moments" else "given the bias"
    factor = cfg.get("bias_min_step_factor", 1.0)
    jitter = f", steps drawn log-uniformly from {factor:g} to 1 times the adapted one" if factor != 1.0 else ""
    windows = cfg.get("metric_windows", 1)
    half = "the first half of the warm-up" + (f" ({windows} windows, each twice the last)" if windows > 1 else "")
    metric = (f", the bias's dense metric re-estimated from its draws over {half}"
              if cfg.get("bias_metric", "start") == "warmup" else "")
    scale = (", the NPE's log radial scale as the bias's scale coordinate"
             if cfg.get("bias_scale_coordinate", "curvature") == "log_scale" else "")
    field = (f", the field's Fourier scales rescaled per |k| shell by its draws over {half}"
             if cfg.get("field_metric", "start") == "warmup" else "")
    return (f"blocked chains (the white noise by HMC {moved}, then {cfg['bias_steps']} {cfg['bias_kernel']} "
            f"move(s) of the bias given the field per sweep{jitter}{metric}{scale}{field})")


def _windows_text(metric: dict) -> str:
    """How a warm-up metric's draws were taken: one window's last draws, or each window's, re-estimated after each."""
    windows = metric.get("windows") or [metric]
    if len(windows) == 1:
        return f"the last {metric['draws_per_chain']} per chain"
    sweeps = "+".join(str(w["sweeps"]) for w in windows)
    return (f"{len(windows)} windows of {sweeps} sweeps, re-estimated after each from its last "
            f"{'/'.join(str(w['draws_per_chain']) for w in windows)} draws per chain")


def _coverage_text(s: dict, z_max: float) -> str:
    """The report's line on a setting's coverage: against an exact sampler's expectation, and nominal."""
    levels = s["coverage"]["levels"].values()
    if not all("expected" in v for v in levels):
        return (f"- Coverage {'is' if s['calibrated'] else 'is NOT'} nominal within {z_max:g} binomial standard "
                "errors in every bin.")
    worst = max(float(np.max(np.abs(v["z_expected"]))) for v in levels)
    worst_nominal = max(float(np.max(np.abs(v["z"]))) for v in levels)
    return (f"- Coverage {'is' if s['calibrated'] else 'is NOT'} what exact chains of these draws give within "
            f"{z_max:g} binomial standard errors in every bin (max |z| {worst:.2f}; in parentheses above: "
            f"the expectation, which is below the nominal level for finitely many effective draws, "
            f"`docs/field_level.md`, \"Calibration\"). Against the nominal levels themselves: max |z| "
            f"{worst_nominal:.2f}, {'within' if s.get('calibrated_nominal') else 'NOT within'} {z_max:g}.")


def report(r: dict) -> str:
    """Markdown report of a results dict written by :func:`run`."""
    cfg = r["config"]
    lines = [
        "# Field-level inference: initial conditions and neural bias sampled jointly",
        "",
        "Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), arXiv:1909.06379, sections 4-5. "
        f"{r['data']['n_field_parameters']} white-noise parameters on a {cfg['n_grid']}^3 grid of "
        f"{r['simulation']['box_size'] / cfg['n_grid']:.2f} Mpc/h voxels plus {r['data']['n_bias_parameters']} "
        f"bias parameters{_head_text(cfg)}; {cfg['order']}LPT forward model"
        f"{' (float32 inside the chains; the mock catalogues drawn in float64)' if cfg.get('forward_dtype', 'float64') == 'float32' else ''}"
        "; halos above "
        f"{cfg['threshold_mass']:.3g} Msun/h "
        f"({r['data']['threshold_particles']:.0f} particles) of one {r['simulation']['n_side']}^3-particle N-body "
        f"run in ({r['simulation']['box_size']:g} Mpc/h)^3 (seed {r['seed']}).",
        "",
        f"Chains: {cfg['n_chains']} {_sampler_text(cfg)} of {cfg['n_warmup']} warm-up and {cfg['n_samples']} kept "
        f"iterations, {cfg['leapfrog_steps']} leapfrog steps, started from the {cfg['start']} "
        f"({'a prior draw of the white noise' if cfg['start'] == 'prior' else 'field MAP'}), bias from its fit to "
        f"the N-body field; preconditioner: {cfg['preconditioner']}; bias coordinates: "
        f"{cfg.get('bias_coordinates', 'diagonal')}.",
        "",
        f"Machine: {r['machine']}. Total {r['timings']['total_s']:.0f} s"
        + (f", the settings {r['timings']['settings_at_once']} at a time in processes of their own."
           if r["timings"].get("settings_at_once", 1) > 1 else "."),
        "",
    ]
    for setting, s in r["settings"].items():
        c, p, x, smp = s["convergence"], s["power"], s["cross_correlation"], s["sampler"]
        title = SETTING_TITLES[setting]
        lines += [f"## {title}", "", f"{s['n_halos']} halos. Sampling {smp['seconds']:.0f} s, "
                  f"{smp['n_gradient_evaluations']:.0f} gradient evaluations, acceptance "
                  f"{smp['acceptance_rate']:.2f}, {smp['n_divergent']} divergences.", ""]
        expected = all("expected" in v for v in s["coverage"]["levels"].values())
        lines += ["| k [h/Mpc] | modes | P prior | P truth | P posterior mean [16, 84%] | z vs prior | r(k) | "
                  + " | ".join(f"{float(l):.0%} coverage" + (" (exact sampler's)" if expected else "")
                               for l in s["coverage"]["levels"]) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(s["coverage"]["levels"])]

        def cell(v, i):
            if "expected" in v:
                return f"{v['fraction'][i]:.3f} ({v['expected'][i]:.3f} ± {v['expected_stderr'][i]:.3f})"
            return f"{v['fraction'][i]:.3f} ± {v['stderr'][i]:.3f}"

        for i, k in enumerate(s["k"]):
            cov = " | ".join(cell(v, i) for v in s["coverage"]["levels"].values())
            lines.append(f"| {k:.3f} | {s['n_modes'][i]} | {p['prior'][i]:.4g} | {p['truth'][i]:.4g} | "
                         f"{p['posterior_mean'][i]:.4g} [{p['posterior_16'][i]:.4g}, {p['posterior_84'][i]:.4g}] | "
                         f"{p['z_vs_prior'][i]:+.2f} | {_fmt(x['r'][i])} | {cov} |")
        lines += [
            "",
            f"- Posterior P(k) {'is' if p['consistent_with_prior'] else 'is NOT'} consistent with the prior "
            f"(|z| <= {r['criteria']['power_sigma_max']:g} cosmic-variance sd in every bin).",
            f"- r(k) at the largest scale: {_fmt(x['r_largest_scale'])} (goal >= 0.9); r falls to 0.5 at "
            f"k = {_fmt(x['k_r_half'])} h/Mpc.",
            _coverage_text(s, r["criteria"]["coverage_z_max"]),
            (f"- **WARNING: these chains have not converged** (max R-hat {_fmt(c['max_rhat'], '.3f')}, min bulk ESS "
             f"{_fmt(c['min_ess_bulk'], '.0f')}): every number above comes from chains that have not forgotten "
             "their start; run longer chains before using them." if not c.get("converged") else
             "- The chains converged (R-hat < 1.01, bulk and tail ESS >= 400, no divergences)."),
            f"- Convergence ({'' if smp.get('bias_fixed') else 'bias parameters and '}the power in the "
            f"{N_LOW_K_BINS} lowest k bins): max R-hat "
            f"{_fmt(c['max_rhat'], '.4f')}, min bulk ESS {_fmt(c['min_ess_bulk'], '.0f')}, min tail ESS "
            f"{_fmt(c['min_ess_tail'], '.0f')}; gradient evaluations per effective sample: "
            f"{_fmt(smp['gradients_per_ess_power_low_k'], '.0f')} (low-k power)"
            + ("." if smp.get("bias_fixed") else f", {_fmt(smp['gradients_per_ess_bias'], '.0f')} (bias)."),
        ]
        if smp.get("bias_spread") is not None:
            spread = smp["bias_spread"]
            lines.append(
                f"- The bias draws spread over {spread['median']:.3g} of their conditional widths at the start "
                f"(sd / width, median over the parameters; {spread['min']:.3g}-{spread['max']:.3g}). The catalogue "
                "constrains the bias at least that much less than a fixed field does; chains whose trajectories "
                "are much shorter random-walk across it (`docs/field_level.md`, \"Known limitations\").")
        ident = s.get("bias_identification")
        if ident is not None:
            weak = ident["weakly_identified"]
            n_par = len(ident["parameters"])
            text = (f"- The catalogue narrows {n_par - len(weak)} of the {n_par} bias parameters' priors to under "
                    f"{WEAK_CONTRACTION:g} of their variance (contraction 1 - Var_post / Var_prior)")
            text += (f"; the other {len(weak)} ({', '.join(f'`{w}`' for w in weak)}) stay nearly their "
                     f"N(0, {ident['prior_sd']:g}^2) prior, directions as wide as the prior that chains cross slowly."
                     if weak else ".")
            if ident.get("max_abs_z") is not None:
                text += (f" The bias the catalogue was drawn with is at most {ident['max_abs_z']:.2f} posterior sd "
                         f"from the posterior mean in any parameter (at `{ident['max_abs_z_parameter']}`; "
                         "`docs/field_level.md`, \"Calibration\", for how to read it).")
            lines.append(text)
        if smp.get("bias_metric") is not None:
            bm = smp["bias_metric"]
            whose = "the last window's" if len(bm.get("windows", ())) > 1 else "their"
            lines.append(
                f"- The bias's metric came from the first {bm['sweeps']} warm-up sweeps ({bm['seconds']:.0f} s; "
                f"{_windows_text(bm)}): {whose} draws spread {bm['spread_min']:.3g}-"
                f"{bm['spread_max']:.3g} times the start's curvature widths along the principal directions.")
        if smp.get("field_metric") is not None:
            fm = smp["field_metric"]
            low = ", ".join(f"{v:.3g}" for v in fm["spread_by_shell"][:3])
            lines.append(
                f"- The field's Fourier scales came from the first {fm['sweeps']} warm-up sweeps ({fm['seconds']:.0f} s; "
                f"{_windows_text(fm)}): per |k| shell they are {fm['spread_min']:.3g}-{fm['spread_max']:.3g} "
                f"times the start's curvature scales ({low} in the three lowest shells).")
        lines += [
            "",
            "Figures: " + ", ".join(f"`{setting}/{v}`" for v in s["figures"].values()) + ".",
            "",
        ]
    lines += ["Samples for re-analysis: `<setting>/samples.h5` (layout in `docs/field_level.md`) and "
              "`<setting>/posterior.nc` (ArviZ).", ""]
    return "\n".join(lines)
