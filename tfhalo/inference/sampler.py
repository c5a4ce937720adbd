"""HMC / NUTS with Stan-style windowed warm-up, composed from TFP's kernels.

Warm-up composes the kernels TFP's
``tfp.experimental.mcmc.windowed_adaptive_nuts`` / ``windowed_adaptive_hmc``
use, inside a ``TransformedTransitionKernel`` (``tfb.Identity()`` when no
bijector is given)::

    TransformedTransitionKernel(              # sampling coordinates z, theta = bijector(z)
      WindowedAdaptation(                     # Stan's fast / slow / fast windows
        DiagonalMassMatrixAdaptation(         # diagonal inverse mass = variance of z
          DualAveragingStepSizeAdaptation(    # step size for `target_accept`
            PreconditionedNoUTurnSampler | PreconditionedHamiltonianMonteCarlo
            | GradientBasedTrajectoryLengthAdaptation(PreconditionedHamiltonianMonteCarlo)))),
      bijector)                               # the last: kernel="chees", ChEES criterion

and sampling runs ``TransformedTransitionKernel`` over the bare NUTS / HMC
kernel with the adapted step size and mass matrix frozen, so every draw kept
comes from one fixed, exactly invariant kernel.  For ChEES that kernel is HMC
with the adapted (Polyak-averaged) trajectory length ``T`` jittered per
transition, ``ceil(u T / step)`` leapfrog steps with ``u ~ U(0, 1)`` drawn
independently of the state: a mixture of HMC kernels, each exactly invariant.

Why not call ``windowed_adaptive_nuts`` itself: it takes a
``tfd.JointDistribution`` (not a plain batched log-density), draws its own
initial state, and runs warm-up and sampling as one ``sample_chain`` call, so
it can neither show progress per block nor write a checkpoint a later call can
resume from.  Here the same kernels run in compiled blocks of
``config.block_size`` steps (:func:`tfhalo.backend.jit`: ``jax.jit``, or
``tf.function(jit_compile=config.jit_compile)``, around ``tfp.mcmc.sample_chain``
with ``previous_kernel_results``); the window schedule lives in the kernel
results, so blocks of any size give the same warm-up.

Backends: the Keras backend picks TFP's substrate (:mod:`tfhalo.backend`):
under ``KERAS_BACKEND=jax`` the kernels are those of
``tensorflow_probability.substrates.jax`` and no TensorFlow module is loaded;
under TensorFlow, TFP's TensorFlow substrate.  The same code runs on both;
``log_prob_fn`` and ``bijector`` must be of the same backend (``keras.ops``
serve both).  The two backends' random streams differ, so the same seed gives
the same chains on each backend, not across them.

Warm-up windows (TFP's ``WindowedAdaptation``, scaled to ``W = num_warmup``):
a fast window of ``3 W / 20`` steps (step size only), slow windows of ``W / 20,
W / 10, W / 5, 2 W / 5`` steps (each ends by setting the inverse mass matrix
to the variance of the draws in that window, pooled over chains, and restarts
dual averaging), then a final fast window for the step size alone.  With
``W = 1000`` that is 150 / 50 + 100 + 200 + 400 / 100 steps, close to the proportions
of Stan's 75 / 25 + ... / 50 default.  The step size is shared by the chains
(dual averaging on the mean of their acceptance probabilities, so
``target_accept`` means what Stan's ``adapt_delta`` means; TFP's windowed
samplers use the more cautious harmonic mean), and so is the diagonal mass
matrix (the variance pooled over chains), so memory is ``O(P)`` for any number
of parameters.

Seeds: block ``k`` of phase ``w`` (0 warm-up, 1 sampling) gets the stateless
seed ``SeedSequence(config.seed, spawn_key=(w, k))`` (two 32-bit words, in the
substrate's seed type), so the same config gives
the same chains, and a run resumed from a checkpoint gives the chains an
uninterrupted run gives.  Each sampling block starts by bootstrapping the
kernel from its first state (one extra gradient per block), so a resumed block
starts from exactly what an uninterrupted one does.

Divergences: NUTS's own ``has_divergence`` (energy error above 1000 anywhere
in the trajectory); HMC: energy error of the proposal above 1000, or not
finite.  HMC's trajectory length ``num_leapfrog_steps * step_size`` is fixed:
near a half period of a well-preconditioned (unit-scale) direction, ``pi``,
successive draws of that direction alternate and mix slowly; NUTS, the
default, chooses the length per draw.  ``step_scale < 1`` takes the kept draws
with that fraction of the adapted step (a target whose tails hold a stiff wall
can diverge at the step the bulk's mean acceptance asks for).

Tracing TFP's kernels takes seconds (with XLA, tens of seconds), so the
compiled functions of the last few ``(log_prob_fn, bijector, config)`` are
kept: calling :func:`sample` again with the same objects (another seed, more
draws, a resumed run) reuses them.

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler: Adaptively Setting Path
    Lengths in Hamiltonian Monte Carlo", JMLR 15, 1593, arXiv:1111.4246
    (NUTS, dual-averaging step size adaptation).
    Betancourt (2017), "A Conceptual Introduction to Hamiltonian Monte Carlo",
    arXiv:1701.02434 (energy, E-BFMI, divergences).
    Stan Development Team, "Stan Reference Manual", section "HMC algorithm
    parameters: automatic parameter tuning" (the windowed warm-up),
    https://mc-stan.org/docs/reference-manual/mcmc.html.
    Hoffman, Radul & Sountsov (2021), "An adaptive MCMC scheme for setting
    trajectory lengths in Hamiltonian Monte Carlo", AISTATS 2021, PMLR 130, 3907
    (ChEES).
    Lao, Suter, Langmore, Chimisov, Saxena, Sountsov, Moore, Saurous, Hoffman &
    Dillon (2020), "tfp.mcmc: Modern Markov Chain Monte Carlo Tools Built for
    Modern Hardware", arXiv:2002.01184.

Example:
    >>> import numpy as np
    >>> from keras import ops
    >>> import tfhalo.inference as inf
    >>> def log_prob(x):                        # (C, P) -> (C,), on either backend
    ...     return -0.5 * ops.sum(x**2, axis=-1)
    >>> cfg = inf.SamplerConfig(num_chains=4, num_warmup=200, num_samples=200, jit_compile=False)
    >>> chains = inf.sample(log_prob, np.zeros((4, 3)), cfg, progress=False)   # doctest: +SKIP
    >>> chains.samples.shape                                                     # doctest: +SKIP
    (200, 4, 3)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
from keras import ops
from tqdm.auto import tqdm

from tfhalo import backend
from tfhalo.atomic import save_npz_atomic
from tfhalo.inference.config import (  # noqa: F401  (KERNELS and the minima are part of this module's API)
    _PLACEMENT_FIELDS,
    KERNEL_NAMES,
    KERNELS,
    MIN_ADAPTIVE_WARMUP,
    MIN_SAMPLES,
    SamplerConfig,
)
from tfhalo.inference.compiled_cache import CompiledCache
from tfhalo.inference.reduction import ThinnedDraws, check_reduction, join_blocks, reduce_block
from tfhalo.validation import check_bool, check_int

tfp = backend.tfp
tfb = tfp.bijectors
_windowed = tfp.experimental.mcmc.windowed_sampling
_precondition = tfp.experimental.mcmc.preconditioning_utils

# Energy error (in nats) above which a transition is called divergent (Stan's and TFP's NUTS value).
MAX_ENERGY_ERROR = 1000.0
_IDENTITY = tfb.Identity()
STAT_NAMES = ("diverging", "energy", "acceptance_rate", "step_size", "n_steps", "lp")


@dataclasses.dataclass
class Chains:
    """Draws and per-draw sampler statistics of :func:`sample`.

    Attributes:
        samples: ``(S, C, P)`` float64 draws of ``theta`` (the target's coordinates).
        sample_stats: dict of ``(S, C)`` arrays: ``diverging`` (bool), ``energy``
            (the Hamiltonian at the draw, for E-BFMI), ``acceptance_rate`` (NUTS: mean
            over the trajectory), ``step_size``, ``n_steps`` (leapfrog steps = gradient
            evaluations), ``lp`` (the sampled density in the sampling coordinates,
            Jacobian included, as Stan's ``lp__``) and, for NUTS, ``tree_depth``.
        seconds: wall time of warm-up and sampling (compilation included; summed over resumed runs).
        n_gradient_evaluations: gradient evaluations per chain (mean over chains), warm-up included.
        config: the :class:`SamplerConfig`.
        step_size: the (frozen) step size of the kept draws: the adapted one times
            ``config.step_scale``; ``(G,)``, one per group, with ``G = chain_groups > 1``.
        inverse_mass_matrix: ``(Q,)`` adapted diagonal inverse mass matrix in the sampling coordinates;
            ``(G, Q)`` with chain groups.
        n_warmup_divergent: divergent transitions during warm-up (all chains).
        trajectory_length: ``kernel="chees"``: the adapted (frozen) longest trajectory ``T`` in the
            sampling coordinates, each transition integrating for ``u T``, ``u ~ U(0, 1]``; ``(G,)``
            with chain groups.  ``None`` for NUTS and HMC.
        thinned: with a :class:`~tfhalo.inference.reduction.DrawReduction`, its coordinates
            ``[start, stop)``: every ``thin``-th draw, their mean over all draws and the
            per-draw summaries (:class:`~tfhalo.inference.reduction.ThinnedDraws`); ``samples``
            then holds the other coordinates only, ``(S, C, P - (stop - start))``.  None without.
    """

    samples: np.ndarray
    sample_stats: dict
    seconds: float
    n_gradient_evaluations: int
    config: SamplerConfig
    step_size: object
    inverse_mass_matrix: np.ndarray
    n_warmup_divergent: int = 0
    trajectory_length: object = None
    thinned: Optional[ThinnedDraws] = None

    def to_inference_data(self, parameter_names=None, variables=None, map_estimate=None):
        """These chains as an ``arviz.InferenceData``; see :func:`tfhalo.inference.to_inference_data`."""
        from tfhalo.inference.diagnostics import to_inference_data

        return to_inference_data(self, parameter_names=parameter_names, variables=variables,
                                 map_estimate=map_estimate)


def batched(fn, num_chains: int):
    """Turn ``theta (P,) -> ()`` into ``(C, P) -> (C,)`` over the ``C`` chains.

    JAX: ``jax.vmap``.  TensorFlow: unrolled over the chains (rather than
    ``tf.vectorized_map``), which works for any traceable ``fn``, XLA included;
    the cost is one graph copy of ``fn`` per chain.  See :func:`tfhalo.backend.map_chains`.

    Example:
        >>> from keras import ops
        >>> f = batched(lambda x: -0.5 * ops.sum(x**2), 2)
        >>> np.asarray(f(ops.ones((2, 3), "float64")))
        array([-1.5, -1.5])
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable. Received: fn={fn!r}")
    num_chains = check_int("num_chains", num_chains, minimum=1)
    return backend.map_chains(fn, num_chains)


def _block_seed(seed: int, phase: int, index: int):
    words = np.random.SeedSequence(seed, spawn_key=(phase, index)).generate_state(2, np.uint32)
    return backend.stateless_seed(words)


def _base_kernel(target, config, step_size, momentum):
    if config.kernel == "nuts":
        return tfp.experimental.mcmc.PreconditionedNoUTurnSampler(
            target, step_size=step_size, momentum_distribution=momentum,
            max_tree_depth=config.max_tree_depth, max_energy_diff=MAX_ENERGY_ERROR)
    return tfp.experimental.mcmc.PreconditionedHamiltonianMonteCarlo(
        target, step_size=step_size, num_leapfrog_steps=config.num_leapfrog_steps,
        momentum_distribution=momentum, store_parameters_in_results=True)


def _chees(inner, config, num_adaptation_steps, halton):
    """TFP's trajectory-length adaptation (ChEES criterion) around the HMC kernel ``inner``.

    With ``num_adaptation_steps == 0`` it only jitters: each transition takes
    ``ceil(u T / step)`` leapfrog steps, ``u`` uniform, ``T`` the results' averaged length.
    """
    return tfp.experimental.mcmc.GradientBasedTrajectoryLengthAdaptation(
        inner, num_adaptation_steps=num_adaptation_steps, max_leapfrog_steps=config.max_leapfrog_steps,
        use_halton_sequence_jitter=halton)


def _core(results, config):
    """The NUTS / Metropolis-Hastings results under ChEES's adaptation results."""
    return results.inner_results if config.kernel == "chees" else results


def _momentum(z, inverse_mass):
    # Momentum ~ N(0, M) with M^-1 = inverse_mass, broadcast over the chains.  A static
    # batch shape keeps the kernel results' shapes fixed inside the while loop.
    chains = z.shape[0] if z.shape[0] is not None else ops.shape(z)[0]
    return _precondition.make_momentum_distribution([z], [chains], [inverse_mass])


def _stats(results, config, energy: bool = True):
    """Per-chain statistics ``(C,)`` of one transition, from the bare NUTS / HMC results.

    Args:
        results: the innermost kernel's results (NUTS, or the Metropolis-Hastings results
            around an uncalibrated HMC step).
        config: the :class:`SamplerConfig` (its ``kernel`` and ``num_leapfrog_steps``).
        energy: False leaves out HMC's Hamiltonian (``energy``, ``lp``): the warm-up does
            not keep it, and it evaluates the momentum distribution twice, seconds of
            tracing in TensorFlow.  (NUTS results carry both, so they stay.)

    Returns:
        A dict of ``(C,)`` tensors: ``diverging``, ``n_steps``, ``step_size``,
        ``acceptance_rate``, and ``energy`` and ``lp`` where kept.
    """
    if config.kernel == "nuts":
        lar = results.log_accept_ratio
        out = dict(diverging=results.has_divergence,
                   # TFP's NUTS stores ln p - kinetic energy: minus the Hamiltonian.
                   energy=-results.energy,
                   n_steps=ops.cast(results.leapfrogs_taken, "int32"),
                   lp=results.target_log_prob,
                   step_size=results.step_size)
    else:  # Metropolis-Hastings results around the uncalibrated HMC step
        lar = results.log_accept_ratio
        acc, prop = results.accepted_results, results.proposed_results
        kinetic = lambda p: -prop.momentum_distribution.log_prob(p)  # noqa: E731
        # ChEES sets the (jittered) number of steps of each transition in the results.
        steps = (prop.num_leapfrog_steps if config.kernel == "chees"
                 else ops.full((), config.num_leapfrog_steps, dtype="int32"))
        out = dict(diverging=ops.logical_not(lar >= -MAX_ENERGY_ERROR),
                   n_steps=ops.broadcast_to(ops.cast(steps, "int32"), ops.shape(lar)),
                   step_size=prop.step_size)
        if energy:
            # The Hamiltonian of the state kept: the trajectory's end if accepted, its start if not
            # (accepted_results then still hold the current state).
            out["energy"] = -acc.target_log_prob + ops.where(results.is_accepted, kinetic(prop.final_momentum),
                                                             kinetic(prop.initial_momentum))
            out["lp"] = acc.target_log_prob
    step = backend.flatten(out["step_size"])[0]
    out["step_size"] = ops.broadcast_to(ops.cast(step, lar.dtype), ops.shape(lar))
    out["acceptance_rate"] = ops.where(ops.isnan(lar), ops.zeros_like(lar), ops.exp(ops.minimum(lar, 0.0)))
    return out


def _check_initial_state(initial_state, num_chains):
    try:
        init = np.asarray(initial_state, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("initial_state must be a (num_chains, P) array of numbers. "
                         f"Received: initial_state={initial_state!r}") from None
    if init.ndim != 2 or init.shape[0] != num_chains or init.shape[1] < 1:
        raise ValueError(f"initial_state must have shape (num_chains={num_chains}, P). "
                         f"Received: initial_state.shape={init.shape}")
    bad = ~np.all(np.isfinite(init), axis=1)
    if np.any(bad):
        raise ValueError(f"initial_state must be finite. Received: non-finite values in chains "
                         f"{np.flatnonzero(bad).tolist()}")
    return init


# Under JAX the start's checks run as compiled programs (op by op, a field-level target would compile each of
# its hundreds of operations on its own), kept per target and bijector as the sampling programs are.
# TensorFlow runs them eagerly, so there is nothing to keep.
_CHECKS = CompiledCache(size=4)


def _check_programs(log_prob_fn, bijector):
    """The start's two checks, each one program under JAX (:func:`tfhalo.backend.as_one_program`).

    Args:
        log_prob_fn: the target, ``theta (C, P) -> (C,)``.
        bijector: the sampling coordinates' bijector, ``z (C, Q) -> theta (C, P)``.

    Returns:
        ``(value, target_and_gradient)``: ``value(theta (C, P)) -> (C,)``, the target itself, and
        ``target_and_gradient(z (C, Q)) -> ((C,), (C, Q))``, the target in the sampling
        coordinates (the bijector's log-Jacobian included) and its gradient.  Under JAX the
        pair is kept for the last few targets and bijectors.
    """

    def build():
        def sampled_target(z):
            return log_prob_fn(bijector.forward(z)) + bijector.forward_log_det_jacobian(z, event_ndims=1)

        return (backend.as_one_program(log_prob_fn),
                backend.as_one_program(lambda z: backend.value_and_gradient(sampled_target, z)))

    if backend.NAME != "jax":
        return build()
    return _CHECKS.get((log_prob_fn, id(bijector)), bijector, build)


def _check_target(log_prob_fn, bijector, init):
    """``(z0, lp0)``: the start in sampling coordinates and the target there; refuses a bad start."""
    c = init.shape[0]
    theta0 = backend.constant(init)
    value_fn, target_and_gradient = _check_programs(log_prob_fn, bijector)
    lp = backend.convert(value_fn(theta0))
    if lp.dtype.name != "float64":
        raise ValueError(f"log_prob_fn must return float64 values. Received: dtype {lp.dtype.name} "
                         "at initial_state")
    if tuple(lp.shape) != (c,):
        raise ValueError(f"log_prob_fn must map a (C, P) batch to (C,) values: it returned shape "
                         f"{tuple(lp.shape)} at initial_state of shape {init.shape} (see tfhalo.inference.batched)")
    lp = backend.to_numpy(lp)
    if not np.all(np.isfinite(lp)):
        bad = np.flatnonzero(~np.isfinite(lp)).tolist()
        raise ValueError(f"log_prob_fn must be finite at initial_state. Received: log_prob_fn(initial_state)"
                         f"={lp.tolist()} (chains {bad})")
    try:
        z0 = backend.convert(bijector.inverse(theta0))
    except backend.ARGUMENT_ERRORS as err:
        raise ValueError(f"initial_state must lie in the bijector's domain: bijector.inverse(initial_state) "
                         f"failed: {err}") from None
    if z0.dtype.name != "float64" or len(z0.shape) != 2 or z0.shape[0] != c:
        raise ValueError(f"bijector.inverse(initial_state) must be a float64 (C, Q) array. Received: "
                         f"shape {tuple(z0.shape)}, dtype {z0.dtype.name}")
    z0_np = backend.to_numpy(z0)
    if not np.all(np.isfinite(z0_np)):
        bad = np.flatnonzero(~np.all(np.isfinite(z0_np), axis=1)).tolist()
        raise ValueError(f"initial_state must lie in the bijector's image: bijector.inverse(initial_state) "
                         f"is not finite in chains {bad}")
    # A new tensor: the bijector caches inverse(theta0) -> z0 and would answer forward(z0) with theta0,
    # cut off from the gradient.
    target, grad = target_and_gradient(backend.constant(z0_np))
    target = backend.to_numpy(target)
    if not np.all(np.isfinite(target)):
        raise ValueError("log_prob_fn plus the bijector's log-Jacobian must be finite at initial_state. Received: "
                         f"{target.tolist()}")
    if grad is None:
        raise ValueError("the gradient of log_prob_fn must be finite at initial_state. Received: no gradient "
                         "(log_prob_fn does not depend differentiably on its argument in TensorFlow)")
    grad = backend.to_numpy(grad)
    if not np.all(np.isfinite(grad)):
        raise ValueError("the gradient of log_prob_fn must be finite at initial_state. Received: non-finite "
                         f"gradient in chains {np.flatnonzero(~np.all(np.isfinite(grad), axis=1)).tolist()}")
    return z0_np, target


def checkpoint_identity(config, extendable: bool = True) -> dict:
    """The config fields that identify a checkpoint: ``config.chain_fields()`` less ``num_samples``.

    A sampling block depends on the warm-up and on the blocks before it, never on how
    many come after it, so a call with more kept draws than a checkpoint holds reuses
    its blocks and samples only the rest: it extends the chains (and one with fewer
    reads a prefix).  ``extendable=False`` gives the identity of checkpoints written
    before this, which held ``num_samples``.
    """
    fields = dict(config.chain_fields())
    if extendable:
        fields.pop("num_samples", None)
    return fields


def _bijector_probe(bijector, size: int, rng: np.random.Generator) -> bytes:
    """``bijector.forward`` at two points of its ``size`` sampling coordinates (zero, and a ``rng`` draw of
    width 0.5), as float32 bytes: two maps of one class with other parameters (another scale, another
    Hessian) differ here even where both send the start to the same point."""
    probe = np.concatenate([np.zeros((1, size)), 0.5 * rng.standard_normal((1, size))])
    return np.asarray(backend.to_numpy(bijector.forward(backend.constant(probe))), np.float32).tobytes()


def _fingerprint(config, init, z0, lp0, bijector, warmup=None, extendable: bool = True, reduction=None,
                 probe: bool = True) -> str:
    # probe=False: the identity checkpoints had before the bijector's values entered it (it named only the
    # bijector's class), which such checkpoints are still read by.
    fields = dict(config=checkpoint_identity(config, extendable), bijector=type(bijector).__name__,
                  lp0=[f"{v:.10g}" for v in lp0])
    if reduction is not None:  # blocks kept thinned are another run's than blocks kept whole
        fields["reduction"] = reduction.identity()
    if warmup is not None:  # a group sampled after a pooled warm-up: its blocks belong to that warm-up
        fields["warmup"] = warmup
    # The backends' random streams differ, so a checkpoint resumes only on its own backend.  TensorFlow's
    # fingerprint leaves the backend out: checkpoints written without one stay valid there.
    if backend.NAME != "tensorflow":
        fields["backend"] = backend.NAME
    payload = json.dumps(fields, sort_keys=True).encode()
    h = hashlib.sha256(payload)
    for a in (init, z0):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a, np.float64).tobytes())
    if probe:
        h.update(_bijector_probe(bijector, z0.shape[-1], np.random.default_rng(20240611)))
    return h.hexdigest()


# Serialises the checkpoint reads of chain groups run in threads (see _Checkpoint._load).
_NPZ_READ_LOCK = threading.Lock()


class _Checkpoint:
    """``warmup.npz`` (adapted step size, inverse mass, state) and ``block_NNNNN.npz`` (sampling blocks)."""

    def __init__(self, directory, fingerprint, config, legacy=None, also=()):
        self.dir = None if directory is None else Path(directory)
        self.fingerprint = fingerprint
        # Older forms of this run's fingerprint (an identity that has since grown) whose checkpoints stay valid.
        self.also = tuple(also)
        self.config_json = json.dumps(config.chain_fields(), sort_keys=True)
        # num_samples -> the fingerprint this run had before checkpoints were extendable (it held
        # num_samples), so that their blocks are reused, and extended, too.
        self.legacy = legacy

    def _check(self, path, data):
        if str(data["fingerprint"]) == self.fingerprint or str(data["fingerprint"]) in self.also:
            return
        theirs = json.loads(str(data["config"]))
        ours = json.loads(self.config_json)
        diff = {k: (theirs.get(k), ours[k]) for k in ours if theirs.get(k) != ours[k]}
        if (self.legacy is not None and set(diff) <= {"num_samples"} and isinstance(theirs.get("num_samples"), int)
                and str(data["fingerprint"]) == self.legacy(theirs["num_samples"])):
            return
        diff.pop("num_samples", None)  # the number of kept draws never makes a checkpoint another run's
        their_backend = str(data["backend"]) if "backend" in data else "tensorflow"
        if diff:
            why = f"the config differs ({', '.join(f'{k}: {a!r} there, {b!r} here' for k, (a, b) in diff.items())})"
        elif their_backend != backend.NAME:
            why = (f"it was written on the {their_backend} backend, this run is on {backend.NAME} (their random "
                   "streams differ)")
        else:
            why = "the target, the kernels, the bijectors or initial_state differ"
        raise ValueError(f"checkpoint_dir holds a checkpoint of another run: {path.name}: {why}. Use another "
                         f"checkpoint_dir or delete it. Received: checkpoint_dir='{self.dir}'")

    def _load(self, name):
        if self.dir is None or not (self.dir / name).is_file():
            return None
        # One reader at a time: chain groups resume in threads, and NumPy parses each array's header
        # with ast.literal_eval, which CPython 3.11 can fail to run in two threads at once
        # ("AST constructor recursion depth mismatch").
        with _NPZ_READ_LOCK, np.load(self.dir / name) as f:
            data = {k: f[k] for k in f.files}
        self._check(self.dir / name, data)
        return data

    def _save(self, name, **arrays):
        if self.dir is not None:
            save_npz_atomic(self.dir / name, fingerprint=np.array(self.fingerprint),
                            config=np.array(self.config_json), backend=np.array(backend.NAME), **arrays)

    def check_existing(self):
        """Refuse, before any work, a directory that already holds another run's files."""
        if self.dir is None or not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.npz")):
            with np.load(path) as f:
                data = {k: f[k] for k in ("fingerprint", "config", "backend") if k in f.files}
            self._check(path, data)
            return

    def load_warmup(self):
        return self._load("warmup.npz")

    def save_warmup(self, **arrays):
        self._save("warmup.npz", **arrays)

    def load_block(self, index, length=None):
        """Block ``index``, or None when missing or (with ``length``) of another length.

        A run with fewer kept draws leaves a shorter last block; a longer run samples it
        again, whole.
        """
        block = self._load(f"block_{index:05d}.npz")
        if block is not None and length is not None and _block_length(block) != length:
            return None
        return block

    def save_block(self, index, **arrays):
        """Save block ``index``, unless a longer one is there (a longer run's, which a shorter run reads a
        prefix of only after sampling its own last block again)."""
        name = f"block_{index:05d}.npz"
        if self.dir is not None and (self.dir / name).is_file():
            with np.load(self.dir / name) as f:
                if _block_length({k: f[k] for k in ("draws", "t_diverging") if k in f.files}) > _block_length(arrays):
                    return
        self._save(name, **arrays)


def _block_length(block) -> int:
    """Sweeps in a saved block: its draws, or (a Gibbs warm-up block) its trace."""
    return int(np.shape(block["draws"] if "draws" in block else block["t_diverging"])[0])


def _check_checkpoint_dir(checkpoint_dir):
    if checkpoint_dir is None:
        return None
    if not isinstance(checkpoint_dir, (str, Path)) or str(checkpoint_dir) == "":
        raise ValueError("checkpoint_dir must be a directory path or None. "
                         f"Received: checkpoint_dir={checkpoint_dir!r}")
    path = Path(checkpoint_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir must be a directory, not a file. Received: checkpoint_dir='{path}'")
    return path


def _blocks(n, size):
    return [min(size, n - start) for start in range(0, n, size)]


def _num_steps(n, config):
    # XLA (and so JAX, always) needs a static trace length (a Python int: one compilation per
    # distinct block length); a TF graph without XLA takes a tensor, so every block shares one trace.
    if backend.NAME == "tensorflow" and not config.jit_compile:
        return backend.constant(n, "int32")
    return n


def check_chain_devices(config) -> None:
    """Refuse a ``config.devices`` this backend / machine cannot shard the chains over.

    :func:`sample` calls it first; a study calls it before any of its own work.

    Raises:
        ValueError: ``devices > 1`` on TensorFlow, or more devices than JAX sees (named).
    """
    if config.devices == 1:
        return
    if backend.NAME != "jax":
        raise ValueError(f"devices > 1 (chain sharding) needs the JAX backend (KERAS_BACKEND=jax). "
                         f"Received: devices={config.devices} on the {backend.NAME} backend")
    from tfhalo.distribute import check_devices

    check_devices(config.devices)


def sample(log_prob_fn, initial_state, config: SamplerConfig, bijector=None, progress: bool = True,
           checkpoint_dir=None, reduction=None) -> Chains:
    """Sample ``exp(log_prob_fn)`` with ``C`` chains of NUTS or HMC after windowed warm-up.

    Args:
        log_prob_fn: ``(C, P) float64 tensor -> (C,)`` unnormalised log-density of ``theta``,
            traceable on the Keras backend (``keras.ops``, or TensorFlow / ``jax.numpy`` to match
            it; XLA-compatible when ``config.jit_compile`` or under JAX); see :func:`batched`.
            Under JAX some ``keras.ops`` (``sin``, ``cos``, ``tanh``) return float32 for float64
            input (Keras follows JAX's 32-bit default): cast back, or use ``jax.numpy``.  It is
            traced, never run eagerly, under JAX (the checks of the start are compiled too), so
            checks it makes on concrete values (``tfhalo.backend.static_value``) do not run
            there: check the data a log-density closes over when it is built.  In TensorFlow
            it is traced once for all the compiled functions (:func:`tfhalo.backend.traced_once`).
        initial_state: ``(C, P)`` finite starting points in ``theta``.
        config: a :class:`SamplerConfig`.
        bijector: optional ``tfp.bijectors.Bijector`` (of the backend's TFP substrate) mapping
            the sampling coordinates ``z`` (``(C, Q)``) to ``theta``: the chains run on
            ``z = bijector.inverse(initial_state)`` with the Jacobian-corrected target
            (``TransformedTransitionKernel``), so they sample the same posterior; e.g.
            :func:`~tfhalo.inference.affine_preconditioner`, ``tfb.Exp()`` for a positive
            parameter, or a ``tfb.Chain`` of both.
        progress: show a tqdm bar (one update per block).
        checkpoint_dir: optional directory.  After warm-up the adapted step size, inverse mass
            matrix and state are saved there, then each completed sampling block (atomic
            ``.npz`` files; with chain groups, the sampling blocks in one subdirectory ``group<g>``
            per group and a pooled warm-up in ``warmup``).  Calling again with the same arguments resumes and returns
            the chains an uninterrupted run returns; a checkpoint of another config, target,
            bijector or start raises ``ValueError``.  Files are left in place (a finished run
            is then read back without sampling).  ``num_samples`` is not part of a checkpoint's
            identity (:func:`checkpoint_identity`): a call with more kept draws extends the
            chains there, sampling only the blocks they lack.
        reduction: optional :class:`~tfhalo.inference.reduction.DrawReduction`: keep its
            coordinates only every ``thin``-th draw (in memory and in the checkpoint), with
            their mean over all draws and per-draw summaries, in :attr:`Chains.thinned`.

    Returns:
        :class:`Chains`.

    Raises:
        ValueError: a bad argument (named), or ``log_prob_fn`` of the wrong shape, dtype or
            not finite (value or gradient) at ``initial_state``; all before any sampling.

    Example:
        >>> bij = affine_preconditioner(theta_map, hessian=h)                    # doctest: +SKIP
        >>> chains = sample(batched(log_post, 4), starts, SamplerConfig(), bijector=bij)  # doctest: +SKIP
        >>> idata = chains.to_inference_data(parameter_names=names, map_estimate=theta_map)  # doctest: +SKIP
    """
    if not isinstance(config, SamplerConfig):
        raise ValueError(f"config must be a SamplerConfig. Received: config={config!r}")
    if not callable(log_prob_fn):
        raise ValueError(f"log_prob_fn must be callable. Received: log_prob_fn={log_prob_fn!r}")
    if bijector is not None and not isinstance(bijector, tfb.Bijector):
        raise ValueError(f"bijector must be a tfp.bijectors.Bijector (TFP's {backend.NAME} substrate) or None. "
                         f"Received: bijector={bijector!r}")
    progress = check_bool("progress", progress)
    check_chain_devices(config)
    ckpt_dir = _check_checkpoint_dir(checkpoint_dir)
    reduction = check_reduction(reduction)
    init = _check_initial_state(initial_state, config.num_chains)
    if reduction is not None:
        reduction.check(init.shape[1])
    bijector = _IDENTITY if bijector is None else bijector
    if config.chain_groups > 1:
        return _sample_groups(log_prob_fn, init, config, bijector, progress, ckpt_dir, reduction)
    z0, lp0 = _check_target(log_prob_fn, bijector, init)
    # Checkpoints from before num_samples left the identity (this run's fingerprint with it: a reduced run's
    # matches none of them, since none was reduced).
    legacy = lambda n: _fingerprint(dataclasses.replace(config, num_samples=n), init, z0, lp0, bijector,  # noqa: E731
                                    extendable=False, reduction=reduction, probe=False)
    ckpt = _Checkpoint(ckpt_dir, _fingerprint(config, init, z0, lp0, bijector, reduction=reduction), config,
                       legacy=legacy, also=[_fingerprint(config, init, z0, lp0, bijector, reduction=reduction,
                                                         probe=False)])
    ckpt.check_existing()
    return _sample_checked(log_prob_fn, z0, config, bijector, progress, ckpt, reduction=reduction)


def _warm_state(compiled, config, z0, ckpt, bar) -> dict:
    """The adapted kernel and the chains' state after warm-up: read from ``ckpt``, or run and saved there."""
    t0 = time.perf_counter()
    warm = ckpt.load_warmup()
    if warm is None:
        z, step_size, inverse_mass, length, n_grad, n_div = _warmup(compiled, config, z0, bar)
        warm = dict(z=z, step_size=np.array(step_size), inverse_mass=inverse_mass,
                    trajectory_length=np.array(length), n_grad=np.array(n_grad),
                    n_divergent=np.array(n_div), seconds=np.array(time.perf_counter() - t0))
        ckpt.save_warmup(**warm)
    else:
        bar.update(config.num_warmup)
    return warm


def _sample_checked(log_prob_fn, z0, config, bijector, progress, ckpt, warm=None, reduction=None) -> Chains:
    """:func:`sample` for one batch of chains, after its arguments, start and checkpoint have been checked.

    ``warm``: the state and adapted kernel of a pooled warm-up to sample from, instead of this
    batch's own warm-up.
    """
    compiled = _compiled(log_prob_fn, bijector, config)

    q = z0.shape[1]
    c = config.num_chains
    bar = tqdm(total=config.num_warmup + config.num_samples, disable=not progress, mininterval=1.0,
               desc=f"{config.kernel.upper()} warm-up")
    if warm is None:
        warm = _warm_state(compiled, config, z0, ckpt, bar)
    else:
        bar.update(config.num_warmup)
    # The warm-up stores the step it adapted; the kept draws take config.step_scale of it.
    step_size = float(warm["step_size"]) * config.step_scale
    # ChEES's frozen trajectory length; None for NUTS and HMC, which have none (their warm-ups store nan,
    # or, saved before ChEES existed, nothing).
    length = float(warm["trajectory_length"]) if config.kernel == "chees" else None
    inverse_mass = np.asarray(warm["inverse_mass"], np.float64)
    seconds = float(warm["seconds"])
    n_grad = float(warm["n_grad"])
    z = np.asarray(warm["z"], np.float64)
    if z.shape != (c, q) or inverse_mass.shape != (q,):
        raise ValueError(f"checkpoint_dir holds a warm-up of other shapes. Received: checkpoint_dir='{ckpt.dir}'")

    bar.set_description(f"{config.kernel.upper()} sampling")
    blocks = []
    for index, n in enumerate(_blocks(config.num_samples, config.block_size)):
        block = ckpt.load_block(index, n)
        if block is None:
            t1 = time.perf_counter()
            draws, stats, z_next = compiled.sampling_block(
                backend.shard_chains(backend.constant(z), config.devices),
                backend.shard_chains(backend.constant(step_size, "float64"), config.devices, replicate=True),
                backend.shard_chains(backend.constant(inverse_mass), config.devices, replicate=True),
                backend.shard_chains(backend.constant(0.0 if length is None else length, "float64"),
                                     config.devices, replicate=True),
                _block_seed(config.seed, 1, index), _num_steps(n, config))
            block = dict(reduce_block(reduction, backend.to_numpy(draws), index * config.block_size),
                         z=backend.to_numpy(z_next), **{k: backend.to_numpy(v) for k, v in stats.items()})
            block["seconds"] = np.array(time.perf_counter() - t1)
            ckpt.save_block(index, **block)
        blocks.append({k: v for k, v in block.items() if k != "z"})  # one state per block would add up
        z = block["z"]
        seconds += float(block["seconds"])
        # The bootstrap at the start of each block costs one gradient.
        n_grad += 1.0 + float(np.sum(block["n_steps"])) / c
        bar.update(n)
        if progress:
            bar.set_postfix(step=f"{step_size:.3g}", divergent=int(sum(b["diverging"].sum() for b in blocks)))
    bar.close()

    samples, thinned = join_blocks(reduction, blocks)
    names = STAT_NAMES + (("tree_depth",) if config.kernel == "nuts" else ())
    stats = {k: np.concatenate([b[k] for b in blocks]) for k in STAT_NAMES}
    stats["diverging"] = stats["diverging"].astype(bool)
    if config.kernel == "nuts":
        # A tree of depth d holds up to 2^d - 1 leapfrog steps (its last doubling may stop early).
        stats["tree_depth"] = np.ceil(np.log2(stats["n_steps"] + 1.0)).astype(np.int64)
    return Chains(samples=samples, sample_stats={k: stats[k] for k in names}, seconds=seconds,
                  n_gradient_evaluations=int(round(n_grad)), config=config, step_size=step_size,
                  inverse_mass_matrix=inverse_mass, n_warmup_divergent=int(warm["n_divergent"]),
                  trajectory_length=length, thinned=thinned)


def _sample_groups(log_prob_fn, init, config, bijector, progress, ckpt_dir, reduction=None) -> Chains:
    """:func:`sample` for ``config.chain_groups > 1``: the groups run in threads, then are joined."""
    groups = config.group_configs()
    n = groups[0].num_chains
    inits = [init[g * n:(g + 1) * n] for g in range(len(groups))]
    # Every group's start is checked (target shape, finiteness) before any thread starts sampling.
    starts = [_check_target(log_prob_fn, bijector, x) for x in inits]
    folder = (lambda name: None) if ckpt_dir is None else (lambda name: ckpt_dir / name)
    pooled = None
    z0 = np.concatenate([z for z, _ in starts])
    lp0 = np.concatenate([lp for _, lp in starts])

    # Checkpoints written when the identity held num_samples are read and extended too.
    def legacy_pooled(n):
        return _fingerprint(dataclasses.replace(config, num_samples=n), init, z0, lp0, bijector, extendable=False,
                            probe=False)

    def legacy_group(g):
        def fingerprint(n):
            group = dataclasses.replace(config, num_samples=n).group_configs()[g]
            return _fingerprint(group, inits[g], *starts[g], bijector,
                                legacy_pooled(n) if config.pool_warmup else None, extendable=False,
                                reduction=reduction, probe=False)
        return fingerprint

    old_pooled = None
    if config.pool_warmup:
        old_pooled = _fingerprint(config, init, z0, lp0, bijector, probe=False)
        pooled = _Checkpoint(folder("warmup"), _fingerprint(config, init, z0, lp0, bijector), config,
                             legacy=legacy_pooled, also=[old_pooled])
    # A group's blocks belong to the pooled warm-up they continue; its files and errors name the whole run.
    ckpts = [_Checkpoint(folder(f"group{g}"), _fingerprint(groups[g], inits[g], *starts[g], bijector,
                                                           None if pooled is None else pooled.fingerprint,
                                                           reduction=reduction), config, legacy=legacy_group(g),
                         also=[_fingerprint(groups[g], inits[g], *starts[g], bijector, old_pooled,
                                            reduction=reduction, probe=False)])
             for g in range(len(groups))]
    # Another run's files in any of the folders are refused before any warm-up.
    for ckpt in ckpts + ([pooled] if pooled else []):
        ckpt.check_existing()
    warms = [None] * len(groups)
    if pooled is not None:
        warms = _pooled_warmup(log_prob_fn, z0, config, bijector, progress, pooled)
    results = [None] * len(groups)
    errors = []

    def run(g):
        try:
            results[g] = _sample_checked(log_prob_fn, starts[g][0], groups[g], bijector, progress, ckpts[g],
                                         warm=warms[g], reduction=reduction)
        except BaseException as err:  # re-raised in the calling thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(g,), name=f"tfhalo-chain-group-{g}") for g in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    stats = {k: np.concatenate([r.sample_stats[k] for r in results], axis=1) for k in results[0].sample_stats}
    return Chains(samples=np.concatenate([r.samples for r in results], axis=1), sample_stats=stats,
                  seconds=max(r.seconds for r in results),
                  n_gradient_evaluations=int(round(np.mean([r.n_gradient_evaluations for r in results]))),
                  config=config, step_size=np.array([r.step_size for r in results]),
                  inverse_mass_matrix=np.stack([r.inverse_mass_matrix for r in results]),
                  n_warmup_divergent=sum(r.n_warmup_divergent for r in results),
                  trajectory_length=(np.array([r.trajectory_length for r in results]) if config.kernel == "chees"
                                     else None),
                  thinned=None if reduction is None else ThinnedDraws.concatenate_chains([r.thinned for r in results]))


def _pooled_warmup(log_prob_fn, z0, config, bijector, progress, ckpt):
    """One warm-up of all ``C`` chains (``z0``, ``(C, Q)``) as a batch: ``[warm state of group g]``.

    The groups' log-densities are concatenated into the batch's, so ``log_prob_fn`` keeps its
    ``(C / chain_groups, P)`` shape.  Each group gets its chains' states and the shared step
    size, mass matrix and trajectory length; the warm-up's divergences are counted once (group 0)
    and its wall time is part of every group's (the groups start after it).
    """
    groups, n = config.chain_groups, config.num_chains // config.chain_groups
    pooled_config = dataclasses.replace(config, chain_groups=1)
    pooled_fn = _Concatenated(log_prob_fn, groups, n)
    bar = tqdm(total=config.num_warmup, disable=not progress, mininterval=1.0,
               desc=f"{config.kernel.upper()} warm-up of all {config.num_chains} chains")
    warm = _warm_state(_compiled(pooled_fn, bijector, pooled_config), pooled_config, z0, ckpt, bar)
    bar.close()
    warms = []
    for g in range(groups):
        w = dict(warm, z=np.asarray(warm["z"])[g * n:(g + 1) * n])
        if g > 0:
            w["n_divergent"] = np.array(0)
        warms.append(w)
    return warms


class _Concatenated:
    """``(groups * n, P) -> (groups * n,)`` from ``log_prob_fn`` of ``(n, P)`` batches.

    Equal wrappers of the same function hash alike, so :func:`_compiled`'s cache finds the
    warm-up it compiled for an earlier call (an unhashable function: no reuse, as there).
    """

    def __init__(self, log_prob_fn, groups, n):
        self.key = (log_prob_fn, groups, n)

    def __call__(self, theta):
        fn, groups, n = self.key
        return ops.concatenate([fn(theta[g * n:(g + 1) * n]) for g in range(groups)], axis=0)

    def __eq__(self, other):
        return isinstance(other, _Concatenated) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


def _warmup_kernel(log_prob_fn, bijector, config, z):
    """TFP's windowed-adaptation stack around NUTS / HMC, in the coordinates ``z`` of ``bijector``."""
    q, dtype, w = z.shape[-1], z.dtype, config.num_warmup
    inner = _base_kernel(log_prob_fn, config, backend.constant(config.init_step_size, dtype),
                         _momentum(z, backend.constant(np.ones(q), dtype)))
    if config.kernel == "chees":
        # The length adapts through every window, following each new mass matrix and step size.
        inner = _chees(inner, config, w, halton=True)
    kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
        inner, num_adaptation_steps=w, target_accept_prob=backend.constant(config.target_accept, dtype))
    # One (Q,) variance pooled over the chains: O(Q) memory, and C draws per step for the estimate.
    variance = tfp.experimental.stats.RunningVariance.from_stats(
        num_samples=backend.constant(0.0, dtype), mean=backend.constant(np.zeros(q), dtype),
        variance=backend.constant(np.ones(q), dtype))
    kernel = tfp.experimental.mcmc.DiagonalMassMatrixAdaptation(kernel, initial_running_variance=variance,
                                                                num_estimation_steps=w)
    kernel = _windowed.WindowedAdaptation(kernel, num_adaptation_steps=w)
    return tfp.mcmc.TransformedTransitionKernel(kernel, [bijector])


def _sampling_kernel(log_prob_fn, bijector, config, z, step_size, inverse_mass):
    kernel = _base_kernel(log_prob_fn, config, step_size, _momentum(z, inverse_mass))
    if config.kernel == "chees":
        kernel = _chees(kernel, config, 0, halton=False)
    return tfp.mcmc.TransformedTransitionKernel(kernel, [bijector])


class _Compiled:
    """The three compiled functions of one (log-density, bijector, config) triple.

    * ``warmup_start(z) -> kernel results``;
    * ``warmup_block(results, seed, n) -> (results, (diverging, n_steps, step size) per step)``;
    * ``sampling_block(z, step size, inverse mass, trajectory length, seed, n) -> (draws (n, C, P), stats,
      last z)`` (the trajectory length is read by ChEES only).

    The kernels are built inside the traced functions from their tensor arguments, so one
    trace serves every block, seed and (without XLA) block length.
    """

    def __init__(self, log_prob_fn, bijector, config):
        jit = config.jit_compile
        log_prob_fn = backend.traced_once(log_prob_fn)

        def warm_stats(_, pkr):
            # TTK -> WindowedAdaptation -> DiagonalMassMatrixAdaptation -> DualAveraging -> NUTS / HMC
            s = _stats(_core(pkr.inner_results.inner_results.inner_results.inner_results, config), config,
                       energy=False)
            return s["diverging"], s["n_steps"], s["step_size"]

        def warmup_start(z):
            return _warmup_kernel(log_prob_fn, bijector, config, z).bootstrap_results(transformed_init_state=[z])

        def warmup_block(pkr, seed, n):
            z = pkr.transformed_state[0]
            res = tfp.mcmc.sample_chain(n, current_state=[bijector.forward(z)], previous_kernel_results=pkr,
                                        kernel=_warmup_kernel(log_prob_fn, bijector, config, z),
                                        trace_fn=warm_stats, return_final_kernel_results=True, seed=seed)
            return res.final_kernel_results, res.trace

        def sampling_block(z, step_size, inverse_mass, trajectory_length, seed, n):
            kernel = _sampling_kernel(log_prob_fn, bijector, config, z, step_size, inverse_mass)
            # Bootstrapping here, not carrying results over from the previous block, makes a block
            # resumed from a checkpoint (which stores z only) repeat an uninterrupted one exactly.
            pkr = kernel.bootstrap_results(transformed_init_state=[z])
            if config.kernel == "chees":
                # Past its (zero) adaptation steps the kernel integrates for u times this length.
                pkr = pkr._replace(inner_results=pkr.inner_results._replace(
                    averaged_max_trajectory_length=ops.cast(trajectory_length, z.dtype)))
            res = tfp.mcmc.sample_chain(n, current_state=[bijector.forward(z)], previous_kernel_results=pkr,
                                        kernel=kernel,
                                        trace_fn=lambda _, r: _stats(_core(r.inner_results, config), config),
                                        return_final_kernel_results=True, seed=seed)
            return res.all_states[0], res.trace, res.final_kernel_results.transformed_state[0]

        # Run once per call: eagerly under TensorFlow (tracing it costs seconds more than running it), as one
        # program under JAX (eagerly it would compile each operation on its own).
        self.warmup_start = backend.as_one_program(warmup_start)
        self.warmup_block = backend.jit(warmup_block, jit_compile=jit, static_argnums=(2,))
        self.sampling_block = backend.jit(sampling_block, jit_compile=jit, static_argnums=(5,))


# Tracing TFP's NUTS takes seconds to tens of seconds (XLA: longer), so the compiled functions
# of the last few (log_prob_fn, bijector, config) triples are kept for repeated calls (other
# seeds, resumed runs).
_COMPILED = CompiledCache(size=4)
_UNTRACED_FIELDS = ("seed", "num_samples", "block_size", "num_chains", "devices", "chain_groups", "pool_warmup",
                    "step_scale")


def _compiled(log_prob_fn, bijector, config) -> _Compiled:
    # Seed, draws, block size, chain count, groups, devices and the step scale (it multiplies the step
    # passed in) do not enter the traced graphs (jax.jit compiles once per input sharding by itself);
    # the other fields do. The key holds log_prob_fn itself: equal wrappers of one function share.
    static = tuple(sorted((k, v) for k, v in config.to_dict().items() if k not in _UNTRACED_FIELDS))
    return _COMPILED.get((log_prob_fn, id(bijector), static), bijector,
                         lambda: _Compiled(log_prob_fn, bijector, config))


def _warmup(compiled, config, z0, bar):
    """Windowed adaptation: ``(z, step size, inverse mass (Q,), trajectory length, gradients per chain,
    divergences)``; the trajectory length is ChEES's adapted one (``nan`` for NUTS and HMC)."""
    c, q = z0.shape
    if config.num_warmup == 0:
        length = config.num_leapfrog_steps * config.init_step_size if config.kernel == "chees" else np.nan
        return z0, config.init_step_size, np.ones(q), length, 0.0, 0
    # The kernel results inherit the chain sharding of z0 (XLA propagates it through each block).
    pkr = compiled.warmup_start(backend.shard_chains(backend.constant(z0), config.devices))
    n_grad, n_div = 1.0, 0
    for index, n in enumerate(_blocks(config.num_warmup, config.block_size)):
        pkr, trace = compiled.warmup_block(pkr, _block_seed(config.seed, 0, index), _num_steps(n, config))
        div, steps, eps = (backend.to_numpy(t) for t in trace)
        n_div += int(div.sum())
        n_grad += float(steps.sum()) / c
        bar.update(n)
        bar.set_postfix(step=f"{float(eps[-1, 0]):.3g}", divergent=n_div)
    dmma = pkr.inner_results.inner_results
    inverse_mass = backend.to_numpy(dmma.running_variance[0].variance())
    # After the last window the dual averaging hands over its averaged step size.
    step_size = float(backend.to_numpy(backend.flatten(dmma.inner_results.new_step_size)[0]))
    length = np.nan
    if config.kernel == "chees":
        # The Polyak average of the adapted lengths, which the kernel itself uses once adaptation ends.
        length = float(backend.to_numpy(dmma.inner_results.inner_results.averaged_max_trajectory_length))
    return backend.to_numpy(pkr.transformed_state[0]), step_size, inverse_mass, length, n_grad, n_div
