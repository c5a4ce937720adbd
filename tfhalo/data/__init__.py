"""Datasets of the deep-halo study, built on the fly from simulations.

* :mod:`~tfhalo.data.particles`: selection by halo mass, splits by simulation.
* :mod:`~tfhalo.data.subboxes`: periodic lattice sub-boxes.
* :mod:`~tfhalo.data.averaging`: the 20-shell spherical averaging.
* :mod:`~tfhalo.data.z0`: z=0 CIC density boxes around final positions.
* :mod:`~tfhalo.data.scalers`: input standardisation, label scaling, JSON I/O.
* :mod:`~tfhalo.data.dataset`: :class:`BoxInputs` and the :class:`HaloDataset` PyDataset.
* :mod:`~tfhalo.data.prediction`: save/load trained models, predict for a simulation.

Example:
    >>> sets = build_particle_sets(sims, 2000, 500, 1000, log_mass_range=(11.5, 13.5), seed=0)  # doctest: +SKIP
    >>> inputs = BoxInputs(sims, kind="raw", size=21)                                          # doctest: +SKIP
    >>> inputs.fit_standardizer(sets["train"])                                                 # doctest: +SKIP
    >>> labels = LabelScaler().fit(sets["train"].log_mass)                                     # doctest: +SKIP
    >>> model.fit(HaloDataset(inputs, sets["train"], labels, shuffle=True), epochs=5, shuffle=False)  # doctest: +SKIP
"""

from tfhalo.data.averaging import shell_average, shell_radii
from tfhalo.data.dataset import INPUT_KINDS, BoxInputs, HaloDataset, predict_log_mass
from tfhalo.data.particles import (PAPER_LOG_MASS_RANGE, ParticleSet, SimulationSplit, build_particle_sets,
                                   eligible_particles, sample_particles, split_simulations)
from tfhalo.data.prediction import TrainedHaloModel, load_trained, predict_to_file, save_trained
from tfhalo.data.scalers import InputStandardizer, LabelScaler, load_scalers, save_scalers
from tfhalo.data.subboxes import SubboxExtractor, extract_subboxes
from tfhalo.data.z0 import Z0BoxBuilder

__all__ = [
    "INPUT_KINDS", "PAPER_LOG_MASS_RANGE", "BoxInputs", "HaloDataset", "InputStandardizer",
    "LabelScaler", "ParticleSet", "SimulationSplit", "SubboxExtractor", "TrainedHaloModel",
    "Z0BoxBuilder", "build_particle_sets", "eligible_particles", "extract_subboxes",
    "load_scalers", "load_trained", "predict_log_mass", "predict_to_file", "sample_particles",
    "save_scalers", "save_trained", "shell_average", "shell_radii", "split_simulations",
]

from tfhalo.data.device import DeviceSubboxes, device_shell_average  # noqa: E402

__all__ += ["DeviceSubboxes", "device_shell_average"]
