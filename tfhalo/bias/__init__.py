"""The neural bias model of Charnock et al. (2020) and its Neyrinck et al. (2014) baseline.

* :mod:`~tfhalo.bias.fields`: density grids and halo catalogues binned to voxels.
* :class:`NeuralBiasModel`: multipole NPE + mixture density head (17 parameters).
* :class:`NeuralBiasLikelihood`: Poisson likelihood of paper eq. 16 + Normal prior.
* :class:`NeyrinckBias`: 4-parameter count model x a global mass distribution.
* :func:`fit_map` (Adam + L-BFGS) and the sampling coordinates
  :class:`LocalLinearReparametrization` (a ``tfp.bijectors.Bijector``): these
  import TensorFlow Probability's substrate for the Keras backend
  (:mod:`tfhalo.backend`), so they load on first use.  Everything here runs on
  TensorFlow and on JAX.  Posterior sampling and its diagnostics are
  :mod:`tfhalo.inference`.

Example:
    >>> from tfhalo.bias import bias_data_from_simulation, build_model, NeuralBiasLikelihood, fit_map
    >>> data = bias_data_from_simulation(sim, n_grid=10, mass_threshold=1e12)
    >>> like = NeuralBiasLikelihood(build_model(data.log_mass_threshold, 10, dtype="float64"), data)
    >>> fit = fit_map(like)
"""

import keras

if keras.backend.backend() == "jax":
    # The bias model and its likelihood compute in float64, which JAX gives only with jax_enable_x64
    # (without it float64 requests silently become float32); tfhalo.backend switches it on.
    import tfhalo.backend  # noqa: F401

from tfhalo.bias.fields import BiasData, bias_data_from_simulation, density_field, make_bias_data
from tfhalo.bias.likelihood import NeuralBiasLikelihood, ParameterLayout, log_prior
from tfhalo.bias.model import NeuralBiasModel, build_model
from tfhalo.bias.neyrinck import NeyrinckBias

_LAZY = {
    "fit_map": "tfhalo.bias.fit",
    "MapResult": "tfhalo.bias.fit",
    "LocalLinearReparametrization": "tfhalo.bias.reparam",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfhalo.bias' has no attribute {name!r}")


__all__ = [
    "BiasData",
    "NeuralBiasLikelihood",
    "NeuralBiasModel",
    "NeyrinckBias",
    "ParameterLayout",
    "bias_data_from_simulation",
    "build_model",
    "density_field",
    "log_prior",
    "make_bias_data",
    *_LAZY,
]
