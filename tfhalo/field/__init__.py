"""Field-level inference: the initial conditions sampled jointly with the neural bias model.

Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural physical
engines for inferring the halo mass distribution function", MNRAS 494, 50,
arXiv:1909.06379, sections 4-5: white noise -> linear field -> 2LPT -> cloud-in-cell
density -> neural bias model -> Poisson likelihood (eq. 16), the forward model of a
BORG-like inference (Jasche & Wandelt 2013, arXiv:1203.3639).

* :mod:`tfhalo.field.fft`: 3-D real FFTs and the Hartley transform in ``keras.ops``;
* :mod:`tfhalo.field.forward`: :class:`LPTForwardModel` (any Keras backend), CIC painting,
  the truth's truncation to an inference grid;
* :mod:`tfhalo.field.posterior`: :class:`FieldCatalogue`, :class:`FieldLevelPosterior`;
* :mod:`tfhalo.field.mock`: catalogues drawn from the model itself;
* :mod:`tfhalo.field.precondition`: the Fourier-space preconditioner (a bijector of TFP's substrate
  of the Keras backend, TensorFlow or JAX; loaded on first use, so that importing
  :mod:`tfhalo.field` imports no TFP);
* :mod:`tfhalo.field.analysis`: power spectra, cross-correlation and coverage of posterior draws;
* :mod:`tfhalo.field.carry`: :class:`NPEMomentCarry`, the blocked sampler's field move carrying the
  bias (loaded on first use, like the preconditioner).

The derivation and the files a run writes are in ``docs/field_level.md``.

Example:
    >>> from tfhalo.field import LPTForwardModel, FieldCatalogue, FieldLevelPosterior
    >>> forward = LPTForwardModel(32, 128.0)
    >>> posterior = FieldLevelPosterior(forward, model, FieldCatalogue.from_halos(c, m, 128.0, 32, 2e12))  # doctest: +SKIP
    >>> posterior.log_prob(state)          # (C, 32**3 + 17) -> (C,)                                   # doctest: +SKIP
"""

from tfhalo.field.forward import LPTForwardModel, cic_paint, linear_amplitude, truncate_white_noise
from tfhalo.field.mock import draw_mock_catalogue
from tfhalo.field.posterior import FieldCatalogue, FieldLevelPosterior

_PRECONDITION = ("FourierPreconditioner", "curvature_scales", "isotropic_scales", "hutchinson_curvature")

__all__ = [
    "LPTForwardModel",
    "cic_paint",
    "linear_amplitude",
    "truncate_white_noise",
    "FieldCatalogue",
    "FieldLevelPosterior",
    "draw_mock_catalogue",
    "NPEMomentCarry",
    *_PRECONDITION,
]


def __getattr__(name):
    if name == "NPEMomentCarry":
        from tfhalo.field import carry

        return carry.NPEMomentCarry
    if name in _PRECONDITION:
        from tfhalo.field import precondition

        return getattr(precondition, name)
    raise AttributeError(f"module 'tfhalo.field' has no attribute {name!r}")
