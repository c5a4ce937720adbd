"""The sampler's settings (:class:`SamplerConfig`) and names, without TensorFlow Probability.

Studies validate their settings against these before any work starts; this
module imports NumPy only, so doing so loads no TFP substrate.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfhalo.validation import check_bool, check_choice, check_float, check_int, check_probability

KERNELS = ("nuts", "hmc", "chees")
#: How reports name each kernel.
KERNEL_NAMES = {"nuts": "NUTS", "hmc": "HMC", "chees": "ChEES-HMC"}
# TFP's window schedule uses num_warmup // 20 as its base slow window.
MIN_ADAPTIVE_WARMUP = 20
# ESS and split R-hat (Vehtari et al. 2021) need at least 4 draws per chain.
MIN_SAMPLES = 4
# Config fields that place the chains without changing them: not part of a run's identity.
_PLACEMENT_FIELDS = ("devices",)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Settings of :func:`sample`; validated on construction.

    Args:
        kernel: ``"nuts"`` (Hoffman & Gelman 2014), ``"hmc"`` (fixed trajectory length) or
            ``"chees"``: HMC whose trajectory length is adapted during warm-up by TFP's
            ``GradientBasedTrajectoryLengthAdaptation`` with the ChEES criterion (Hoffman, Radul &
            Sountsov 2021) across the chains of a batch, then frozen and jittered uniformly in
            ``(0, T]`` per transition.  All chains of a batch take the same number of leapfrog
            steps, so none waits for another; it needs at least 2 chains per batch.
        num_chains: chains ``C``, run as one batch.
        num_warmup: warm-up steps per chain: 0 (no adaptation: ``init_step_size``
            and a unit mass matrix) or at least 20 (TFP's window schedule).
        num_samples: draws kept per chain, at least 4 (split R-hat and ESS need them).
        target_accept: dual-averaging target of the acceptance probability, averaged over the
            chains, in (0, 1) (Stan's ``adapt_delta``).
        max_tree_depth: NUTS's limit: at most ``2**max_tree_depth - 1`` leapfrog steps per draw.
        num_leapfrog_steps: HMC's leapfrog steps per draw; ChEES's first trajectory length is
            ``num_leapfrog_steps * init_step_size``.
        max_leapfrog_steps: ChEES's cap on the leapfrog steps of one transition.
        init_step_size: step size at the start of warm-up (in the sampling coordinates).
        seed: non-negative integer; every random draw derives from it.
        jit_compile: compile each block with XLA (the log-density must be XLA-compatible).
            Under JAX every block is compiled with XLA whatever this says (JAX has no
            uncompiled graph mode).
        block_size: steps per compiled call: progress and checkpoint granularity.
        devices: devices the chains are sharded over (JAX only): the chain axis is split
            over a 1-D ``jax.sharding`` mesh of the first ``devices`` devices (step size and
            inverse mass matrix replicated), so each compiled block runs SPMD, ``C / devices``
            chains per device.  ``num_chains`` must be a multiple of it.  Sharding moves the
            chains, it does not change them: the same seed gives the same draws (to float
            rounding of the cross-device means) for any ``devices``, so ``devices`` is left out
            of the checkpoint fingerprint and a checkpoint resumes on another device count.
            Checked against the devices JAX sees (``XLA_FLAGS=--xla_force_host_platform_device_count``
            fakes CPU ones) when :func:`sample` starts; TensorFlow takes only 1.
        chain_groups: groups the chains are split into for sampling, ``C / chain_groups`` chains
            each, run concurrently in threads with their own seeds.  One batch of chains runs on
            one CPU core and moves in lockstep (every step waits for the chain with the longest
            NUTS trajectory); groups use as many cores and wait only within themselves.
            ``log_prob_fn`` then takes ``(C / chain_groups, P)`` batches.  Group ``g``'s seed
            derives from ``seed`` and ``g``, so a run with groups is reproducible but differs from
            one without.  1 (default): one batch.  Not combined with ``devices > 1``.
        pool_warmup: with ``chain_groups > 1``, warm all ``C`` chains up as one batch (one step
            size for their mean acceptance, one mass matrix from the draws of all of them), then
            sample the groups concurrently with that frozen kernel (default).  ``False``: every
            group adapts its own step size and mass matrix from its own chains; with one chain per
            group these rest on a single chain's few hundred warm-up draws and scatter from chain
            to chain, and a chain whose step came out too long diverges in the tails.  Unused
            without groups.
        step_scale: fraction of the adapted step size the kept draws are taken with, in (0, 1]
            (1: the warm-up's step).  Dual averaging sets the step by the mean acceptance, which
            the bulk of the posterior dominates; a target with a stiff region in its tails (an
            exponential wall a long step overshoots) can need a shorter step than that mean asks
            for.  Every draw is still an exact transition of one fixed kernel; NUTS then takes
            about ``1 / step_scale`` times more leapfrog steps per draw to reach its U-turn, while
            HMC's fixed ``num_leapfrog_steps`` give a trajectory ``step_scale`` times shorter.

    Raises:
        ValueError: a field out of range, naming the field and its value.

    Example:
        >>> SamplerConfig(kernel="hmc", num_leapfrog_steps=0)
        Traceback (most recent call last):
        ...
        ValueError: num_leapfrog_steps must be at least 1. Received: num_leapfrog_steps=0
    """

    kernel: str = "nuts"
    num_chains: int = 4
    num_warmup: int = 1000
    num_samples: int = 1000
    target_accept: float = 0.8
    max_tree_depth: int = 10
    num_leapfrog_steps: int = 16
    max_leapfrog_steps: int = 1000
    init_step_size: float = 0.1
    seed: int = 0
    jit_compile: bool = True
    block_size: int = 100
    devices: int = 1
    chain_groups: int = 1
    pool_warmup: bool = True
    step_scale: float = 1.0

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("kernel", check_choice("kernel", self.kernel, KERNELS))
        put("num_chains", check_int("num_chains", self.num_chains, minimum=1))
        warmup = check_int("num_warmup", self.num_warmup, minimum=0)
        if 0 < warmup < MIN_ADAPTIVE_WARMUP:
            raise ValueError(f"num_warmup must be 0 (no adaptation) or at least {MIN_ADAPTIVE_WARMUP} (the "
                             f"shortest windowed adaptation). Received: num_warmup={self.num_warmup!r}")
        put("num_warmup", warmup)
        samples = check_int("num_samples", self.num_samples)
        if samples < MIN_SAMPLES:
            raise ValueError(f"num_samples must be at least {MIN_SAMPLES} (split R-hat and ESS need 4 draws per "
                             f"chain). Received: num_samples={self.num_samples!r}")
        put("num_samples", samples)
        put("target_accept", check_probability("target_accept", self.target_accept))
        put("max_tree_depth", check_int("max_tree_depth", self.max_tree_depth, minimum=1, maximum=30))
        put("num_leapfrog_steps", check_int("num_leapfrog_steps", self.num_leapfrog_steps, minimum=1))
        put("max_leapfrog_steps", check_int("max_leapfrog_steps", self.max_leapfrog_steps, minimum=1))
        put("init_step_size", check_float("init_step_size", self.init_step_size, positive=True))
        put("seed", check_int("seed", self.seed, minimum=0, maximum=2**63 - 1))
        put("jit_compile", check_bool("jit_compile", self.jit_compile))
        put("block_size", check_int("block_size", self.block_size, minimum=1))
        put("devices", check_int("devices", self.devices, minimum=1))
        if self.num_chains % self.devices != 0:
            raise ValueError(f"num_chains must be a multiple of devices={self.devices} (each device runs as many "
                             f"chains). Received: num_chains={self.num_chains}")
        put("chain_groups", check_int("chain_groups", self.chain_groups, minimum=1))
        if self.num_chains % self.chain_groups != 0:
            raise ValueError(f"num_chains must be a multiple of chain_groups={self.chain_groups} (each group runs "
                             f"as many chains). Received: num_chains={self.num_chains}")
        if self.kernel == "chees" and self.num_chains // self.chain_groups < 2:
            raise ValueError(f"kernel='chees' adapts the trajectory length across the chains of a batch: it needs "
                             f"at least 2 chains per batch (num_chains / chain_groups). Received: "
                             f"num_chains={self.num_chains}, chain_groups={self.chain_groups}")
        put("pool_warmup", check_bool("pool_warmup", self.pool_warmup))
        scale = check_float("step_scale", self.step_scale, positive=True)
        if scale > 1.0:
            raise ValueError(f"step_scale must lie in (0, 1] (a fraction of the adapted step size). Received: "
                             f"step_scale={self.step_scale!r}")
        put("step_scale", scale)
        if self.chain_groups > 1 and self.devices > 1:
            raise ValueError(f"chain_groups > 1 runs groups in threads and devices > 1 shards one batch: use one "
                             f"of them. Received: chain_groups={self.chain_groups}, devices={self.devices}")

    def to_dict(self) -> dict:
        """JSON-ready copy of the fields."""
        return dataclasses.asdict(self)

    def chain_fields(self) -> dict:
        """The run's identity, for checkpoints and caches: :meth:`to_dict` less ``devices`` (placement only).

        ``chain_groups`` and ``pool_warmup`` change the chains, so they are part of the identity
        when there are groups.
        """
        fields = {k: v for k, v in self.to_dict().items() if k not in _PLACEMENT_FIELDS}
        if fields["chain_groups"] == 1:
            del fields["chain_groups"], fields["pool_warmup"]
        # Only ChEES reads the cap: the identity of NUTS and HMC runs stays what it was without it.
        if fields["kernel"] != "chees":
            del fields["max_leapfrog_steps"]
        # The identity of a run at the adapted step stays what it was before the scale existed.
        if fields["step_scale"] == 1.0:
            del fields["step_scale"]
        return fields

    def group_configs(self) -> list:
        """The configs of the ``chain_groups`` groups: ``C / chain_groups`` chains, one seed each.

        Example:
            >>> [g.seed for g in SamplerConfig(chain_groups=1, seed=3).group_configs()]
            [3]
        """
        if self.chain_groups == 1:
            return [self]
        n = self.num_chains // self.chain_groups
        return [dataclasses.replace(self, num_chains=n, chain_groups=1, seed=_group_seed(self.seed, g))
                for g in range(self.chain_groups)]


def _group_seed(seed: int, group: int) -> int:
    # Spawn key (2, g): phases 0 and 1 are the warm-up and sampling blocks of _block_seed.
    return int(np.random.SeedSequence(seed, spawn_key=(2, group)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def block_size_for(*lengths: int, largest: int = 100, smallest: int = 10, default: int = 50) -> int:
    """A ``block_size`` that cuts every phase of a run into blocks of one length.

    Under XLA (and so always under JAX) each distinct block length is a program of its
    own: a warm-up of 75 sweeps run in blocks of 50 compiles a second program for the
    last 25, which on CPU costs as long as dozens of sweeps.  This gives the largest
    length of at most ``largest`` that divides every positive length, so that every
    block of :func:`~tfhalo.inference.sample` or :func:`~tfhalo.inference.sample_gibbs`
    shares one program; ``default`` when that length is below ``smallest`` (progress
    and checkpoints that fine would cost more calls than the programs they save).

    Args:
        *lengths: the phases' lengths (``num_warmup``, ``num_samples``); zeros are ignored.
        largest: the longest block (progress and checkpoint granularity), at least 1.
        smallest: the shortest block worth sharing, between 1 and ``largest``.
        default: the block length when none of at least ``smallest`` divides them all.

    Returns:
        The block length.

    Raises:
        ValueError: a negative length, no positive length, or bounds out of order.

    Example:
        >>> block_size_for(150, 600)        # blocks of 75: one program for both phases
        75
        >>> block_size_for(75, 101)         # no common length of 10 or more
        50
    """
    largest = check_int("largest", largest, minimum=1)
    smallest = check_int("smallest", smallest, minimum=1, maximum=largest)
    default = check_int("default", default, minimum=1)
    values = [check_int("lengths", n, minimum=0) for n in lengths]
    positive = [n for n in values if n > 0]
    if not positive:
        raise ValueError(f"lengths needs a positive length. Received: lengths={values}")
    common = math.gcd(*positive)
    best = max(d for d in range(1, min(common, largest) + 1) if common % d == 0)
    return best if best >= smallest else default
