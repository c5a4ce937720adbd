"""Posterior sampling with TensorFlow Probability's kernels, and ArviZ output.

* :class:`SamplerConfig`, :func:`sample` -> :class:`Chains`: NUTS or HMC over
  any batched log-density ``(C, P) -> (C,)``, optionally in sampling
  coordinates given by a ``tfp.bijectors.Bijector``
  (``TransformedTransitionKernel``), with Stan-style windowed adaptation of
  the step size and a diagonal mass matrix, run in compiled, seeded,
  checkpointed blocks.  Memory is ``O(P)`` per chain and draw.
* :func:`affine_preconditioner`: ``theta = theta_MAP + chol(H^-1) z`` as a bijector
  (the one dense, ``O(P^2)``, option).
* :class:`GibbsKernel`, :class:`GibbsConfig`, :func:`sample_gibbs`: blocked
  (Metropolis-within-Gibbs) sampling, each block moved by its own TFP kernel
  (HMC, slice sampling, ...) given the others, as BORG alternates the initial
  conditions and the bias parameters; a :class:`BlockCarry` moves a block with
  the others held in non-centred coordinates, so that they follow it.
* :class:`JitteredStepSize`: an HMC-like kernel with a random step per
  transition (log-uniform below the adapted one), so that a chain in a region
  stiffer than the adapted step allows still moves.
* :class:`DrawReduction` (``reduction=`` of :func:`sample` and :func:`sample_gibbs`):
  keep a large block of coordinates (a field) only every ``thin``-th draw, with
  its mean over all draws and per-draw summaries (:class:`ThinnedDraws`), in
  memory and in the checkpoint.
* :func:`batched`: a ``(P,) -> ()`` log-density as ``(C, P) -> (C,)``.
* :func:`to_inference_data` (also :meth:`Chains.to_inference_data`),
  :func:`save_inference_data`, :func:`load_inference_data`,
  :func:`convergence_summary`: ArviZ ``InferenceData`` in NetCDF, rank-normalised
  split R-hat and bulk / tail ESS (Vehtari et al. 2021, arXiv:1903.08008);
  :func:`posterior_contraction`: how far the data narrow each prior, and a
  known truth's posterior z-score (Betancourt 2018, arXiv:1803.08393).

The same code runs on TensorFlow (TFP's TensorFlow substrate) and under
``KERAS_BACKEND=jax`` (``tensorflow_probability.substrates.jax``, which needs
the tfp-nightly of the ``jax`` extra; no TensorFlow module is loaded): the
Keras backend picks the substrate, the compiler and the gradient through
:mod:`tfhalo.backend`.  Write targets in ``keras.ops`` to run on both.

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15, 1593, arXiv:1111.4246.
    Betancourt (2017), "A Conceptual Introduction to Hamiltonian Monte Carlo", arXiv:1701.02434.
    Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization, folding, and
    localization: An improved R-hat for assessing convergence of MCMC", arXiv:1903.08008.
    Stan Development Team, "Stan Reference Manual", HMC automatic parameter tuning (windowed warm-up).

Example:
    >>> import tfhalo.inference as inf
    >>> config = inf.SamplerConfig(kernel="nuts", num_chains=4, num_warmup=1000, num_samples=1000)
    >>> chains = inf.sample(log_prob_fn, initial_state, config,                       # doctest: +SKIP
    ...                     bijector=inf.affine_preconditioner(theta_map, hessian=h))
    >>> idata = chains.to_inference_data(parameter_names=names, map_estimate=theta_map)  # doctest: +SKIP
    >>> inf.save_inference_data(idata, "out/posterior.nc")                             # doctest: +SKIP
    >>> inf.convergence_summary(idata)["converged"]                                      # doctest: +SKIP
"""

import importlib

# Names load their module (and so TFP) on first use: ``tfhalo.inference.config`` and the
# studies' settings that check against it import without a TFP substrate.
_HOMES = {
    "affine_preconditioner": "bijectors",
    "preconditioner_from_draws": "bijectors",
    "convergence_summary": "diagnostics",
    "load_inference_data": "diagnostics",
    "posterior_contraction": "diagnostics",
    "save_inference_data": "diagnostics",
    "to_inference_data": "diagnostics",
    "DrawReduction": "reduction",
    "ThinnedDraws": "reduction",
    "BlockCarry": "gibbs",
    "GibbsConfig": "gibbs",
    "GibbsKernel": "gibbs",
    "JitteredStepSize": "jitter",
    "sample_gibbs": "gibbs",
    "Chains": "sampler",
    "batched": "sampler",
    "check_chain_devices": "sampler",
    "checkpoint_identity": "sampler",
    "sample": "sampler",
    "SamplerConfig": "config",
    "block_size_for": "config",
}


_SUBMODULES = ("bijectors", "config", "diagnostics", "gibbs", "jitter", "reduction", "sampler")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"tfhalo.inference.{name}")
    if name in _HOMES:
        value = getattr(importlib.import_module(f"tfhalo.inference.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfhalo.inference' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOMES) | set(_SUBMODULES))


__all__ = [
    "BlockCarry",
    "Chains",
    "DrawReduction",
    "ThinnedDraws",
    "GibbsConfig",
    "GibbsKernel",
    "JitteredStepSize",
    "SamplerConfig",
    "check_chain_devices",
    "checkpoint_identity",
    "affine_preconditioner",
    "batched",
    "block_size_for",
    "preconditioner_from_draws",
    "convergence_summary",
    "load_inference_data",
    "posterior_contraction",
    "sample",
    "sample_gibbs",
    "save_inference_data",
    "to_inference_data",
]
