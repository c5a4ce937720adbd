"""The studies of tfhalo as library code: a frozen ``Config`` and ``run(config, suite, out)`` each.

* :mod:`tfhalo.studies.deep_halos`: the deep-halo CNNs of Lucie-Smith, Peiris,
  Pontzen, Nord & Thiyagalingam (2020), "Deep learning insights into
  cosmological structure formation", arXiv:2011.10577.
* :mod:`tfhalo.studies.neural_bias`: the neural bias model of Charnock, Lavaux,
  Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural physical engines for
  inferring the halo mass distribution function", MNRAS 494, 50, arXiv:1909.06379.
* :mod:`tfhalo.studies.field_level`: the field-level inference of the same
  paper (sections 4-5): the initial conditions sampled jointly with the bias.
* :mod:`tfhalo.studies.validate_simulations`: the simulation engine against
  colossus (initial P(k), the FoF mass function of Watson et al. 2013).
* :mod:`tfhalo.studies.common`: caches, the suite rule, the command-line shell;
  :mod:`tfhalo.studies.results_doc`: ``docs/results.md`` from the runs.

Submodules are imported on first access, so ``import tfhalo.studies`` does not
import TensorFlow.

Example:
    >>> from tfhalo.studies import deep_halos                                   # doctest: +SKIP
    >>> cfg = deep_halos.Config.preset("quick", seed=0)                          # doctest: +SKIP
    >>> results = deep_halos.run(cfg, suite="runs/demo/suite", out="runs/demo/deep_halos")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("common", "deep_halos", "field_level", "neural_bias", "results_doc", "validate_simulations")

__all__ = list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
