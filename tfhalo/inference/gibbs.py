"""Blocked (Metropolis-within-Gibbs) sampling composed from TFP transition kernels.

The state ``(C, P)`` of ``C`` chains is cut into contiguous blocks along its
last axis.  A sweep moves block 1 by its own TFP kernel with the other blocks
held fixed, then block 2 given the new block 1, and so on.  Each kernel leaves
its block's conditional distribution invariant, so each move, and therefore
the sweep, leaves the joint posterior invariant (Geman & Geman 1984; Tierney
1994).  This is how BORG samples the initial conditions and the bias
parameters of a field-level inference (Jasche & Wandelt 2013): the two blocks
differ in geometry and cost.  The field's conditional needs the whole forward
model and is high-dimensional, so it moves by HMC.  The bias conditional given
the field is cheap and low-dimensional, so it can take many derivative-free
moves (e.g. TFP's hit-and-run ``SliceSampler``) per sweep.

Each block has:

* a kernel factory ``kernel_fn(conditional_log_prob_fn) -> TransitionKernel``,
  for example ``lambda f: tfp.mcmc.DualAveragingStepSizeAdaptation(
  tfp.mcmc.HamiltonianMonteCarlo(f, 0.1, 20), num_adaptation_steps=200)``;
  adaptation state (step sizes) is carried from sweep to sweep, while the
  cached target values are recomputed because the other blocks moved;
* optionally a ``tfp.bijectors.Bijector`` from its sampling coordinates to the
  target's, so that the block runs in preconditioned coordinates (the
  Jacobian enters its conditional);
* optionally a ``conditional_fn(blocks) -> (x_i -> (C,))``: the block's
  conditional log density given every block's current value (target
  coordinates).  This lets a block reuse work done once per sweep, e.g. the
  density field that the bias block's conditional depends on.  By default the
  conditional is the joint target with the other blocks fixed.
* optionally a :class:`BlockCarry`: the block then moves with the other blocks
  held fixed in *other* coordinates ``a`` (their ancillary, or non-centred,
  coordinates given this block) instead of their own, so that they follow the
  move.  In the coordinates ``(x_i, a)`` the joint density is
  ``p(x_i, others(x_i, a)) |det d others / d a|``; a move of ``x_i`` that keeps
  its conditional given ``a`` invariant keeps that density, and so ``p``,
  invariant, whatever the map ``others`` (a bijection in ``a`` for every
  ``x_i``).  Alternating such a move with the other blocks' own moves is the
  ancillarity-sufficiency interweaving of Yu & Meng (2011) when ``a`` is
  nearly independent of ``x_i``.

Example:
    >>> import numpy as np
    >>> from keras import ops
    >>> from tfhalo import backend
    >>> tfp = backend.tfp
    >>> def log_prob(x):                                   # (C, 2) -> (C,)
    ...     return -0.5 * ops.sum(x**2, axis=-1)
    >>> kernel = GibbsKernel(log_prob, [1, 1], [
    ...     lambda f: tfp.mcmc.HamiltonianMonteCarlo(f, step_size=0.5, num_leapfrog_steps=3),
    ...     lambda f: tfp.mcmc.SliceSampler(f, step_size=1.0, max_doublings=4)])
    >>> chains = sample_gibbs(kernel, np.zeros((2, 2)), GibbsConfig(num_chains=2, num_warmup=0,
    ...                       num_samples=20), progress=False)
    >>> chains.samples.shape
    (20, 2, 2)

References:
    Geman, S. & Geman, D. (1984), IEEE TPAMI 6, 721 (the Gibbs sampler).
    Tierney, L. (1994), "Markov chains for exploring posterior distributions",
    Annals of Statistics 22, 1701 (hybrid kernels and their invariance).
    Neal, R. M. (2003), "Slice sampling", Annals of Statistics 31, 705,
    arXiv:physics/0009028.
    Jasche, J. & Wandelt, B. D. (2013), "Bayesian physical reconstruction of
    initial conditions from large-scale structure surveys", MNRAS 432, 894,
    arXiv:1203.3639 (BORG's blocked sampler).
    Yu, Y. & Meng, X.-L. (2011), "To center or not to center: that is not the
    question -- an ancillarity-sufficiency interweaving strategy (ASIS) for
    boosting MCMC efficiency", J. Comput. Graph. Stat. 20, 531 (moves in
    non-centred coordinates).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from typing import Callable, Optional, Sequence

import keras
import numpy as np
from keras import ops

from tfhalo import backend
from tfhalo.inference.sampler import (
    MAX_ENERGY_ERROR,
    Chains,
    _bijector_probe,
    _block_seed,
    _blocks,
    _check_checkpoint_dir,
    _check_initial_state,
    _Checkpoint,
    _num_steps,
    checkpoint_identity,
)
from tfhalo.inference.compiled_cache import CompiledCache
from tfhalo.inference.reduction import check_reduction, join_blocks, reduce_block
from tfhalo.validation import check_bool, check_int

__all__ = ["BlockCarry", "GibbsConfig", "GibbsKernel", "sample_gibbs"]

tfp = backend.tfp


@dataclasses.dataclass(frozen=True)
class GibbsConfig:
    """Settings of :func:`sample_gibbs`; validated on construction.

    Args:
        num_chains: chains ``C``, run as one batch.
        num_warmup: sweeps run first and discarded (the blocks' own adaptation,
            e.g. ``DualAveragingStepSizeAdaptation``, should stop within them).
        num_samples: kept sweeps per chain, at least 4.
        seed: non-negative integer; every random draw derives from it.
        block_size: sweeps per compiled call (progress and checkpoint granularity).  Under
            XLA each distinct block length compiles a program of its own;
            :func:`~tfhalo.inference.block_size_for` picks one that divides both phases.
        jit_compile: compile each call with XLA (TensorFlow); JAX always compiles.

    Raises:
        ValueError: a field out of range, naming it and its value.
    """

    num_chains: int = 4
    num_warmup: int = 200
    num_samples: int = 500
    seed: int = 0
    block_size: int = 50
    jit_compile: bool = True

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("num_chains", check_int("num_chains", self.num_chains, minimum=1))
        put("num_warmup", check_int("num_warmup", self.num_warmup, minimum=0))
        put("num_samples", check_int("num_samples", self.num_samples, minimum=4))
        put("seed", check_int("seed", self.seed, minimum=0, maximum=2**63 - 1))
        put("block_size", check_int("block_size", self.block_size, minimum=1))
        put("jit_compile", check_bool("jit_compile", self.jit_compile))

    def to_dict(self) -> dict:
        """JSON-ready copy of the fields (with ``kernel="gibbs"``)."""
        return dict(kernel="gibbs", **dataclasses.asdict(self))

    def chain_fields(self) -> dict:
        """The run's identity, for checkpoints: :meth:`to_dict`."""
        return self.to_dict()


class BlockCarry:
    """How the other blocks follow a block's move: their coordinates ``a`` given it (a non-centred move).

    Subclasses define :meth:`ancillary` and :meth:`carry`; :meth:`log_prob` has a
    default from them and may be overridden to share work (the forward model)
    between the carried blocks and the joint target.  For every value of the
    moving block ``x_i``, ``a -> carry(x_i, a)`` must be a bijection onto the other
    blocks with inverse ``ancillary``; the log-determinant of its Jacobian in
    ``a`` enters the move's target, so the chains stay exact for any such map
    (a poor one only mixes worse).

    Example (``y`` given ``x`` is near ``b x``; the move of ``x`` carries ``y`` along):

        >>> class Shear(BlockCarry):
        ...     def ancillary(self, blocks):
        ...         return blocks[1] - 2.0 * blocks[0]
        ...     def carry(self, x_i, a):
        ...         return [x_i, 2.0 * x_i + a], ops.zeros_like(x_i[:, 0])
    """

    def ancillary(self, blocks):
        """Every block's value (target coordinates, a list of ``(C, P_j)``) -> the others' coordinates ``a``."""
        raise NotImplementedError

    def carry(self, x_i, a):
        """``(blocks, log_det)``: every block's value at ``x_i (C, P_i)`` with the others at ``a`` (the moving
        block's slot holds ``x_i``), and ``(C,)`` ``ln |det d others / d a|``."""
        raise NotImplementedError

    def log_prob(self, target_log_prob_fn, x_i, a):
        """``(C,)``: the moving block's target, ``ln p(carry(x_i, a)) + log_det``."""
        blocks, log_det = self.carry(x_i, a)
        return target_log_prob_fn(ops.concatenate(blocks, axis=-1)) + log_det


def _refresh(kernel, results, x):
    """``kernel``'s results at ``x`` under its current target, keeping wrappers' adaptation state.

    A wrapper (step-size adaptation) keeps its own fields and has its inner
    results rebuilt; the innermost kernel is bootstrapped afresh, because its
    cached target value and gradient belong to the other blocks' old values.
    """
    if hasattr(kernel, "inner_kernel") and hasattr(results, "inner_results"):
        return results._replace(inner_results=_refresh(kernel.inner_kernel, results.inner_results, x))
    return kernel.bootstrap_results(x)


def _find(results, name):
    """The first field ``name`` found in ``results`` or its nested ``inner_results``, else None."""
    while results is not None:
        if hasattr(results, name):
            return getattr(results, name)
        results = getattr(results, "inner_results", None)
    return None


class GibbsKernel(tfp.mcmc.TransitionKernel):
    """A sweep of per-block TFP kernels over contiguous blocks of a ``(C, P)`` state.

    The kernel runs on the sampling coordinates ``z`` (each block's bijector's
    inverse of the target's coordinates); :meth:`forward` / :meth:`inverse`
    convert whole states.

    Args:
        target_log_prob_fn: ``(C, P) -> (C,)`` joint log density (target coordinates).
        block_sizes: ``P_i`` per block, summing to ``P``.
        kernel_fns: per block, ``f -> TransitionKernel`` given the block's
            conditional log density ``f: (C, Q_i) -> (C,)`` in its sampling coordinates.
        conditional_fns: per block None (the joint target with the others fixed)
            or ``blocks -> (x_i (C, P_i) -> (C,))``: the conditional given the list
            of every block's current value in target coordinates.
        bijectors: per block None (identity) or a ``tfp.bijectors.Bijector`` from
            sampling to target coordinates (event rank 1, one per chain).
        steps_per_sweep: per block, how many transitions of its kernel a sweep makes.
        carries: per block None (the other blocks stay put while it moves) or a
            :class:`BlockCarry` (they stay put in its coordinates ``a`` and follow the
            move); a block with a carry has no ``conditional_fn``.

    Raises:
        ValueError: mismatched lengths or a bad block size, naming the argument.
    """

    def __init__(self, target_log_prob_fn: Callable, block_sizes: Sequence[int], kernel_fns: Sequence[Callable],
                 conditional_fns: Optional[Sequence[Optional[Callable]]] = None,
                 bijectors: Optional[Sequence] = None, steps_per_sweep: Optional[Sequence[int]] = None,
                 carries: Optional[Sequence[Optional[BlockCarry]]] = None, name: str = "gibbs"):
        if not callable(target_log_prob_fn):
            raise ValueError(f"target_log_prob_fn must be callable. Received: target_log_prob_fn={target_log_prob_fn!r}")
        sizes = [check_int("block_sizes", s, minimum=1) for s in block_sizes]
        n = len(sizes)
        if n < 1:
            raise ValueError(f"block_sizes needs at least one block. Received: block_sizes={list(block_sizes)}")

        def per_block(name, values, default):
            values = [default] * n if values is None else list(values)
            if len(values) != n:
                raise ValueError(f"{name} needs one entry per block ({n}). Received: {len(values)} entries")
            return values

        kernel_fns = per_block("kernel_fns", kernel_fns, None)
        if not all(callable(k) for k in kernel_fns):
            raise ValueError(f"kernel_fns must be callables f -> TransitionKernel. Received: kernel_fns={kernel_fns!r}")
        conditional_fns = per_block("conditional_fns", conditional_fns, None)
        bijectors = [b if b is not None else tfp.bijectors.Identity()
                     for b in per_block("bijectors", bijectors, None)]
        steps = [check_int("steps_per_sweep", s, minimum=1) for s in per_block("steps_per_sweep", steps_per_sweep, 1)]
        carries = per_block("carries", carries, None)
        for i, c in enumerate(carries):
            if c is not None and not isinstance(c, BlockCarry):
                raise ValueError(f"carries must hold None or BlockCarry instances. Received: carries[{i}]={c!r}")
            if c is not None and conditional_fns[i] is not None:
                raise ValueError(f"block {i} has both a carry and a conditional_fn; a carried block's target is the "
                                 f"joint at the carried blocks. Received: carries[{i}]={c!r}")
        self._parameters = dict(target_log_prob_fn=target_log_prob_fn, block_sizes=sizes, kernel_fns=kernel_fns,
                                conditional_fns=conditional_fns, bijectors=bijectors, steps_per_sweep=steps,
                                carries=carries, name=name)
        # One trace of the joint (and of its gradient) for every block, the bootstrap and the sweeps; and one
        # of each carried block's target, a function of the moving block and the carry's ancillary tensors.
        self._joint = backend.traced_once(target_log_prob_fn)
        self._carried = [None if c is None
                         else backend.traced_once(functools.partial(_carried_log_prob, c, self._joint))
                         for c in carries]

    @property
    def parameters(self):
        return self._parameters

    @property
    def is_calibrated(self) -> bool:
        return True

    @property
    def block_sizes(self):
        return list(self._parameters["block_sizes"])

    def _split(self, state):
        if len(self.block_sizes) == 1:  # ops.split cannot cut at no index
            return [state]
        return list(ops.split(state, np.cumsum(self.block_sizes)[:-1].tolist(), axis=-1))

    def forward(self, z):
        """Sampling coordinates ``(..., P)`` -> target coordinates."""
        bij = self._parameters["bijectors"]
        return ops.concatenate([b.forward(x) for b, x in zip(bij, self._split(z))], axis=-1)

    def inverse(self, theta):
        """Target coordinates ``(..., P)`` -> sampling coordinates."""
        bij = self._parameters["bijectors"]
        return ops.concatenate([b.inverse(x) for b, x in zip(bij, self._split(theta))], axis=-1)

    def _kernel(self, i, z_blocks):
        """Block ``i``'s kernel given every block's sampling coordinates, and its carry's ``a`` (or None)."""
        p = self._parameters
        bij = p["bijectors"][i]
        # The other blocks are constants of this block's conditional. Without the stop, TensorFlow
        # differentiates this block's target through the while loops that moved them earlier in the
        # sweep, which XLA cannot compile ("requires a fixed tensor list size").
        theta = [b.forward(ops.stop_gradient(z)) for b, z in zip(p["bijectors"], z_blocks)]
        make, carry, a = p["conditional_fns"][i], p["carries"][i], None
        if carry is not None:
            a = keras.tree.map_structure(ops.stop_gradient, carry.ancillary(theta))

            def conditional(x_i):
                return self._carried[i](x_i, a)
        elif make is not None:
            conditional = make(theta)
        else:
            def conditional(x_i):
                return self._joint(ops.concatenate(theta[:i] + [x_i] + theta[i + 1:], axis=-1))

        def target(z_i):
            return conditional(bij.forward(z_i)) + bij.forward_log_det_jacobian(z_i, event_ndims=1)

        return p["kernel_fns"][i](target), a

    def bootstrap_results(self, init_state):
        blocks = self._split(init_state)
        return tuple(self._kernel(i, blocks)[0].bootstrap_results(blocks[i]) for i in range(len(blocks)))

    def one_step(self, current_state, previous_kernel_results, seed=None):
        steps = self._parameters["steps_per_sweep"]
        seeds = tfp.random.split_seed(seed, n=sum(steps))
        blocks = self._split(current_state)
        results, s = [], 0
        bijectors, carries = self._parameters["bijectors"], self._parameters["carries"]
        for i in range(len(blocks)):
            kernel, a = self._kernel(i, blocks)
            r = _refresh(kernel, previous_kernel_results[i], blocks[i])
            for _ in range(steps[i]):
                blocks[i], r = kernel.one_step(blocks[i], r, seed=seeds[s])
                s += 1
            if a is not None:  # the other blocks follow the move, at the same a
                carried, _ = carries[i].carry(bijectors[i].forward(blocks[i]), a)
                # "+ 0": a new tensor, so that a block's bijector computes forward(z) afresh instead of returning
                # (from TFP's bijector cache) the carried value, through which no gradient in z flows.
                blocks = [z if j == i else ops.cast(bijectors[j].inverse(x), z.dtype) + 0.0
                          for j, (z, x) in enumerate(zip(blocks, carried))]
            results.append(r)
        return ops.concatenate(blocks, axis=-1), tuple(results)

    def trace(self, results):
        """Per-chain statistics of one sweep: ``diverging`` (any block), ``lp`` and per block ``i``
        ``acceptance_rate_i``, ``diverging_i`` and ``step_size_i`` (of the block's last transition
        in the sweep; absent for kernels without them, such as the slice sampler)."""
        out, diverging, lp = {}, None, None
        for i, r in enumerate(results):
            lar = _find(r, "log_accept_ratio")
            # MH-based kernels keep the current state's value in their accepted results
            target = _find(_find(r, "accepted_results") or r, "target_log_prob")
            if target is not None:
                lp = target
            if lar is not None:
                lar = ops.where(ops.isnan(lar), -np.inf, lar)
                out[f"acceptance_rate_{i}"] = ops.exp(ops.minimum(lar, 0.0))
                div = ops.logical_not(lar >= -MAX_ENERGY_ERROR)
                out[f"diverging_{i}"] = div
                diverging = div if diverging is None else ops.logical_or(diverging, div)
            step = _find(r, "new_step_size")
            if step is None:
                step = _find(r, "step_size")
            if step is not None and lp is not None:
                value = ops.mean(ops.cast(backend.flatten(step)[0], "float64"))
                out[f"step_size_{i}"] = ops.zeros_like(ops.cast(lp, "float64")) + value
        out["diverging"] = diverging if diverging is not None else ops.zeros_like(lp, dtype="bool")
        out["lp"] = lp
        return out


def _carried_log_prob(carry, joint, x_i, a):
    """A carried block's target ``carry.log_prob(joint, x_i (C, P_i), a) -> (C,)``: a module-level function of
    ``carry`` and ``joint`` so that :func:`tfhalo.backend.traced_once` traces it once per kernel."""
    return carry.log_prob(joint, x_i, a)


# Kernel parameters that do not change the chains (or are the target itself, which lp0 stands for).
_NOT_IDENTITY = frozenset({"name", "target_log_prob_fn", "experimental_shard_axis_names",
                           "experimental_reduce_chain_axis_names", "store_parameters_in_results",
                           "parallel_iterations"})


def _kernel_identity(value):
    """A JSON-ready description of a TFP transition kernel's settings, for checkpoint fingerprints.

    The kernel's class and every parameter in its ``parameters`` that can change its
    transitions: nested kernels (``inner_kernel``) recursively, numbers and small
    arrays by value (10 significant digits), larger arrays by a hash of their float32
    values (so that last-bit differences between machines do not change them).
    Functions (the target, TFP's getter/setter hooks) and names are left out.

    Args:
        value: a ``tfp.mcmc.TransitionKernel`` (or one of its parameters).

    Returns:
        A dict (a kernel), list, string, number, bool or None.

    Example:
        >>> _kernel_identity(tfp.mcmc.HamiltonianMonteCarlo(lambda x: -x**2, 0.1, 20))["num_leapfrog_steps"]
        '20'
    """
    if isinstance(value, tfp.mcmc.TransitionKernel):
        params = getattr(value, "parameters", None) or {}
        return dict(kernel=type(value).__name__, **{
            k: _kernel_identity(v) for k, v in sorted(params.items())
            if k not in _NOT_IDENTITY and (isinstance(v, tfp.mcmc.TransitionKernel) or not callable(v))})
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return f"{value:.10g}"
    try:
        arr = np.asarray(backend.to_numpy(value), np.float64)
    except (TypeError, ValueError):
        return type(value).__name__
    if arr.size > 8:
        return hashlib.sha256(np.ascontiguousarray(arr, np.float32).tobytes()).hexdigest()[:16]
    return [f"{x:.10g}" for x in arr.ravel()]


def _block_kernels_identity(kernel: GibbsKernel) -> list:
    """Each block's kernel settings (:func:`_kernel_identity`), built on a stand-in target."""
    def stand_in(x):  # the factories only wrap their target; none is evaluated here
        return ops.zeros(ops.shape(x)[:-1], dtype=x.dtype)

    return [_kernel_identity(make(stand_in)) for make in kernel.parameters["kernel_fns"]]


def _bijectors_probe(kernel: GibbsKernel) -> bytes:
    """Each block's bijector at two fixed points of its sampling coordinates (float32 bytes): two maps of the
    same class with other parameters (another scale, another Hessian) differ here."""
    rng = np.random.default_rng(20240611)
    return b"".join(_bijector_probe(bij, size, rng)
                    for size, bij in zip(kernel.block_sizes, kernel.parameters["bijectors"]))


def _fingerprint(kernel: GibbsKernel, config: GibbsConfig, theta0: np.ndarray, lp0: np.ndarray,
                 extendable: bool = True, reduction=None, kernels: bool = True) -> str:
    # kernels=False: the identity checkpoints had before the block kernels' settings and the bijectors' values
    # entered it (it named only the bijectors' classes), which such checkpoints are still read by.
    p = kernel.parameters
    fields = dict(config=checkpoint_identity(config, extendable), block_sizes=p["block_sizes"], steps=p["steps_per_sweep"],
                  bijectors=[type(b).__name__ for b in p["bijectors"]], lp0=[f"{v:.10g}" for v in lp0],
                  backend=backend.NAME)
    if reduction is not None:  # blocks kept thinned are another run's than blocks kept whole
        fields["reduction"] = reduction.identity()
    if any(c is not None for c in p["carries"]):  # absent otherwise: checkpoints from before carries stay valid
        fields["carries"] = [None if c is None else type(c).__name__ for c in p["carries"]]
    if kernels:
        fields["kernels"] = _block_kernels_identity(kernel)
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update(str(theta0.shape).encode())
    h.update(np.ascontiguousarray(theta0, np.float64).tobytes())
    if kernels:
        h.update(_bijectors_probe(kernel))
    return h.hexdigest()


# Tracing a sweep of the blocks' kernels takes seconds (XLA: longer), so the compiled sweeps of the
# last few kernels are kept for repeated calls: other seeds, extended and resumed runs. A kernel fixes
# everything the traced program computes.
_COMPILED = CompiledCache(size=4)


def _compiled_sweeps(kernel: GibbsKernel, jit_compile: bool):
    """``(start(z) -> results, run(z, results, seed, n) -> (draws, trace, last z, results))``, compiled."""

    def build():
        def start(z):
            return kernel.bootstrap_results(z)

        def run(z, results, seed, n):
            res = tfp.mcmc.sample_chain(n, current_state=z, previous_kernel_results=results, kernel=kernel,
                                        trace_fn=lambda _, r: kernel.trace(r), return_final_kernel_results=True,
                                        seed=seed)
            states = res.all_states
            draws = ops.reshape(kernel.forward(ops.reshape(states, (-1, states.shape[-1]))), ops.shape(states))
            return draws, res.trace, states[-1], res.final_kernel_results

        # The bootstrap runs once per call: TensorFlow runs it eagerly (tracing it costs seconds more than
        # running it), JAX as one program (eagerly it would compile each operation on its own).
        return (backend.as_one_program(start),
                backend.jit(run, jit_compile=jit_compile, static_argnums=(3,)))

    return _COMPILED.get((id(kernel), bool(jit_compile)), kernel, build)


def sample_gibbs(kernel: GibbsKernel, initial_state, config: GibbsConfig = GibbsConfig(),
                 progress: bool = True, checkpoint_dir=None, reduction=None) -> Chains:
    """Run ``config.num_warmup + config.num_samples`` sweeps of ``kernel``; keep the last ``num_samples``.

    Args:
        kernel: a :class:`GibbsKernel`.
        initial_state: ``(C, P)`` finite starting points in the target's coordinates.
        config: a :class:`GibbsConfig` (``num_chains`` must equal ``C``).
        progress: a tqdm bar per compiled block of sweeps.
        checkpoint_dir: optional directory.  After each compiled block of sweeps (warm-up
            or kept) the state and every block kernel's results (adapted step sizes
            included) are saved there (atomic ``.npz``).  Calling again with the same
            arguments resumes and returns the chains an uninterrupted run returns; a
            checkpoint of another config, kernel layout or start raises ``ValueError``.  A
            call with a larger ``num_samples`` extends the chains there (see
            :func:`~tfhalo.inference.checkpoint_identity`).
        reduction: optional :class:`~tfhalo.inference.reduction.DrawReduction`, as in
            :func:`~tfhalo.inference.sample`: its coordinates are kept every ``thin``-th
            sweep, with their mean and per-sweep summaries, in ``Chains.thinned``.

    Returns:
        :class:`~tfhalo.inference.Chains` with ``samples (S, C, P)`` in the target's
        coordinates and ``sample_stats``: ``diverging`` (any HMC block's energy error
        above 1000), ``lp`` (the last block's conditional), ``acceptance_rate`` (the
        mean of the blocks that report one) and per block ``acceptance_rate_i`` and
        ``step_size_i``; ``n_warmup_divergent`` counts the warm-up sweeps' divergences.
        ``n_gradient_evaluations`` is 0: the blocks' kernels do not all report them
        (count them from the kernels' settings).

    Raises:
        ValueError: a bad argument or a non-finite target at ``initial_state``, before any sweep.
    """
    from tqdm.auto import tqdm

    if not isinstance(kernel, GibbsKernel):
        raise ValueError(f"kernel must be a GibbsKernel. Received: kernel={kernel!r}")
    if not isinstance(config, GibbsConfig):
        raise ValueError(f"config must be a GibbsConfig. Received: config={config!r}")
    progress = check_bool("progress", progress)
    ckpt_dir = _check_checkpoint_dir(checkpoint_dir)
    reduction = check_reduction(reduction)
    theta0 = _check_initial_state(initial_state, config.num_chains)
    p = sum(kernel.block_sizes)
    if theta0.shape[1] != p:
        raise ValueError(f"initial_state must be finite with shape (num_chains, P) = ({config.num_chains}, {p}). "
                         f"Received: shape {theta0.shape}")
    if reduction is not None:
        reduction.check(p)
    lp0 = backend.to_numpy(kernel.parameters["target_log_prob_fn"](backend.constant(theta0)))
    if not np.all(np.isfinite(lp0)):
        raise ValueError(f"the target log density must be finite at initial_state. Received: {lp0.tolist()}")

    start_c, run_c = _compiled_sweeps(kernel, config.jit_compile)
    z = backend.convert(kernel.inverse(backend.constant(theta0)))
    results = start_c(z)
    # Checkpoints from before num_samples left the identity (this run's fingerprint with it: a reduced run's
    # matches none of them, since none was reduced).
    legacy = lambda n: _fingerprint(kernel, dataclasses.replace(config, num_samples=n), theta0, lp0,  # noqa: E731
                                    extendable=False, reduction=reduction, kernels=False)
    ckpt = _Checkpoint(ckpt_dir, _fingerprint(kernel, config, theta0, lp0, reduction=reduction), config,
                       legacy=legacy, also=[_fingerprint(kernel, config, theta0, lp0, reduction=reduction,
                                                         kernels=False)])
    # The kernels' results are nested named tuples; a checkpoint stores their leaves in order and
    # packs them back into the structure a fresh start has.
    template_leaves = keras.tree.flatten(results)
    template = results
    seconds = 0.0
    kept, traces = [], []
    bar = tqdm(total=config.num_warmup + config.num_samples, desc="Gibbs", disable=not progress, mininterval=1.0)
    number, warmup_divergent = 0, 0
    for phase, total in ((0, config.num_warmup), (1, config.num_samples)):
        for index, n in enumerate(_blocks(total, config.block_size)):
            saved = ckpt.load_block(number, n)
            if saved is None:
                t1 = time.perf_counter()
                draws, trace, z, results = run_c(z, results, _block_seed(config.seed, phase, index),
                                                 _num_steps(n, config))
                saved = dict(z=backend.to_numpy(z), seconds=np.array(time.perf_counter() - t1))
                if ckpt_dir is not None:  # the kernels' results are only needed to resume
                    saved.update({f"r{i:04d}": backend.leaf_to_numpy(leaf)
                                  for i, leaf in enumerate(keras.tree.flatten(results))})
                saved.update({f"t_{k}": backend.to_numpy(v) for k, v in trace.items()})
                if phase == 1:
                    saved.update(reduce_block(reduction, backend.to_numpy(draws), index * config.block_size))
                ckpt.save_block(number, **saved)
            else:
                results = keras.tree.pack_sequence_as(
                    template, [backend.leaf_from_numpy(saved[f"r{i:04d}"], leaf)
                               for i, leaf in enumerate(template_leaves)])
                z = backend.convert(saved["z"])
            if phase == 1:
                kept.append({k: v for k, v in saved.items() if k == "draws" or k.startswith(("thinned", "s_"))})
                traces.append({k[2:]: np.asarray(v) for k, v in saved.items() if k.startswith("t_")})
            else:
                warmup_divergent += int(np.sum(saved["t_diverging"]))
            seconds += float(saved["seconds"])
            number += 1
            bar.update(n)
    bar.close()
    samples, thinned = join_blocks(reduction, kept)
    stats = {k: np.concatenate([t[k] for t in traces]) for k in traces[0]}
    stats["diverging"] = stats["diverging"].astype(bool)
    accept = [v for k, v in stats.items() if k.startswith("acceptance_rate_")]
    if accept:
        stats["acceptance_rate"] = np.mean(accept, axis=0)
    steps = sorted(k for k in stats if k.startswith("step_size_"))
    step_size = float(stats[steps[0]][-1].mean()) if steps else float("nan")
    if steps:
        stats["step_size"] = stats[steps[0]]
    return Chains(samples=samples, sample_stats=stats, seconds=seconds, n_gradient_evaluations=0, config=config,
                  step_size=step_size, inverse_mass_matrix=np.ones(p), n_warmup_divergent=warmup_divergent,
                  thinned=thinned)
