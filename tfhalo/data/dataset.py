"""Model inputs built on the fly, and the ``keras.utils.PyDataset`` feeding them.

:class:`BoxInputs` turns ``(simulation, particle)`` pairs into standardised
boxes of one of the study's input kinds; :class:`HaloDataset` batches a
:class:`~tfhalo.data.particles.ParticleSet` through it with Keras's parallel
workers, seeded shuffling per epoch, and never drops a partial batch.
"""

from __future__ import annotations

import math
import threading

import keras
import numpy as np

from tfhalo.validation import check_choice, check_finite_array, check_float, check_int
from tfhalo.data.averaging import shell_average
from tfhalo.data.scalers import InputStandardizer, LabelScaler
from tfhalo.data.subboxes import SubboxExtractor
from tfhalo.data.z0 import Z0BoxBuilder

INPUT_KINDS = ("raw", "averaged", "z0")


class BoxInputs:
    """Standardised CNN inputs for particles of a list of simulations.

    Kinds:
        ``raw``: the initial density in a periodic ``size**3`` lattice sub-box.
        ``averaged``: the raw box standardised, then shell-averaged (20 shells).
        ``z0``: the z=0 CIC density in a ``z0_width`` Mpc/h box at ``size**3``.

    Args:
        simulations: sequence of :class:`~tfhalo.sim.Simulation` (indexed by
            ``ParticleSet.sim_index``).
        kind: one of ``INPUT_KINDS``.
        size: box side in voxels.
        standardizer: fitted :class:`InputStandardizer`, or None to get
            unstandardised boxes (and to fit one with :meth:`fit_standardizer`).
        z0_width: z=0 box side in Mpc/h.
        z0_transform: ``"delta"`` or ``"log1p"`` (see :class:`Z0BoxBuilder`).

    Raises:
        ValueError: a bad argument, or a non-finite value in a simulation's
            ``initial_density`` (``final_positions`` for ``z0``).

    Example:
        >>> inputs = BoxInputs([sim], kind="raw", size=17)  # doctest: +SKIP
        >>> inputs.fit_standardizer(particles)              # doctest: +SKIP
        >>> x = inputs(particles.sim_index[:8], particles.particle_id[:8])  # doctest: +SKIP
    """

    def __init__(self, simulations, kind: str = "raw", size: int = 75,
                 standardizer: InputStandardizer | None = None, z0_width: float = 1.5,
                 z0_transform: str = "delta"):
        from tfhalo.data.z0 import Z0_TRANSFORMS

        check_choice("kind", kind, INPUT_KINDS)
        size = check_int("size", size, minimum=1)
        # Checked here for every kind: a saved config is reused for z0 models later.
        z0_width = check_float("z0_width", z0_width, positive=True)
        check_choice("z0_transform", z0_transform, Z0_TRANSFORMS)
        if standardizer is not None and not isinstance(standardizer, InputStandardizer):
            raise ValueError(f"standardizer must be an InputStandardizer or None. "
                             f"Received: standardizer={standardizer!r}")
        self.simulations = list(simulations)
        if not self.simulations:
            raise ValueError("simulations must not be empty. Received: []")
        self.kind, self.size = kind, int(size)
        self.standardizer = standardizer
        self.z0_width, self.z0_transform = float(z0_width), z0_transform
        if kind != "z0":
            smallest = min(s.n_side for s in self.simulations)
            if self.size > smallest:
                raise ValueError(
                    f"size must not exceed the smallest simulation lattice (n_side={smallest}): "
                    f"the periodic sub-box would repeat voxels. Received: size={self.size}"
                )
        # One NaN voxel would spread into every box that contains it (and through
        # training into every weight): refuse it here, before any box is built.
        field = "final_positions" if kind == "z0" else "initial_density"
        for sim in self.simulations:
            check_finite_array(field, getattr(sim, field), f"simulation {sim.name!r}")
        self._builders = {}
        self._lock = threading.Lock()

    def _builder(self, sim_index: int):
        builder = self._builders.get(sim_index)
        if builder is None:
            with self._lock:
                builder = self._builders.get(sim_index)
                if builder is None:
                    sim = self.simulations[sim_index]
                    if self.kind == "z0":
                        builder = Z0BoxBuilder(sim, self.size, self.z0_width, self.z0_transform)
                    else:
                        builder = _LatticeBuilder(sim, self.size)
                    self._builders[sim_index] = builder
        return builder

    def unstandardized(self, sim_index, particle_id) -> np.ndarray:
        """``(P, s, s, s)`` float32 boxes before standardisation (and averaging)."""
        sim_index = np.asarray(sim_index, dtype=np.int64).reshape(-1)
        particle_id = np.asarray(particle_id, dtype=np.int64).reshape(-1)
        if sim_index.shape != particle_id.shape:
            raise ValueError(
                f"sim_index and particle_id must have the same length. "
                f"Received: {sim_index.shape[0]} and {particle_id.shape[0]}"
            )
        s = self.size
        out = np.empty((sim_index.size, s, s, s), dtype=np.float32)
        for i in np.unique(sim_index):
            rows = np.flatnonzero(sim_index == i)
            out[rows] = self._builder(int(i))(particle_id[rows])
        return out

    def __call__(self, sim_index, particle_id) -> np.ndarray:
        """``(P, s, s, s, 1)`` float32 standardised model inputs."""
        if self.standardizer is None or self.standardizer.mean is None:
            raise RuntimeError("BoxInputs has no fitted standardizer: call fit_standardizer first.")
        x = self.standardizer.transform(self.unstandardized(sim_index, particle_id))
        if self.kind == "averaged":
            x = shell_average(x)
        return x[..., None]

    def fit_standardizer(self, particles, max_particles: int = 2000, batch_size: int = 128,
                         seed=0) -> InputStandardizer:
        """Fit mean and std on (up to ``max_particles`` of) the training particles."""
        max_particles = check_int("max_particles", max_particles, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        rng = np.random.default_rng(seed)
        n = len(particles)
        pick = rng.choice(n, size=min(n, int(max_particles)), replace=False)
        std = InputStandardizer()
        for start in range(0, pick.size, batch_size):
            rows = pick[start:start + batch_size]
            std.partial_fit(self.unstandardized(particles.sim_index[rows], particles.particle_id[rows]))
        self.standardizer = std
        return std

    @property
    def input_shape(self) -> tuple:
        return (self.size,) * 3 + (1,)

    def config(self) -> dict:
        """Everything needed to rebuild these inputs for a new simulation."""
        spacing = [float(s.box_size / s.n_side) for s in self.simulations]
        return {"input_kind": self.kind, "subbox_size": self.size, "z0_width": self.z0_width,
                "z0_transform": self.z0_transform, "lattice_spacing": float(np.median(spacing))}


class _LatticeBuilder:
    def __init__(self, sim, size):
        self.sim = sim
        self.extract = SubboxExtractor(sim.initial_density, size)

    def __call__(self, particle_id):
        return self.extract(self.sim.lattice_sites(particle_id))


class HaloDataset(keras.utils.PyDataset):
    """Batches of ``(inputs, scaled labels)`` for ``model.fit`` / ``predict``.

    Every particle appears exactly once per epoch; the last batch may be
    smaller (never dropped). With ``shuffle=True`` the order is a fresh
    permutation each epoch drawn from ``numpy.random.default_rng([seed, epoch])``,
    so a run is reproducible and nothing touches the global RNG.

    Args:
        inputs: a :class:`BoxInputs` with a fitted standardizer.
        particles: the :class:`~tfhalo.data.particles.ParticleSet` to serve.
        label_scaler: fitted :class:`LabelScaler`; ``None`` yields inputs only
            (for prediction).
        batch_size: particles per batch.
        shuffle: reshuffle each epoch.
        seed: shuffling seed.
        workers, use_multiprocessing, max_queue_size: passed to ``PyDataset``.

    Pass ``shuffle=False`` to ``model.fit``: the dataset shuffles itself with
    its seed, while Keras would reorder the batches again with Python's
    unseeded global ``random``.

    Raises:
        ValueError: a bad argument, or a non-finite ``particles.log_mass``
            when labels are served.

    Example:
        >>> ds = HaloDataset(inputs, sets["train"], label_scaler, batch_size=64, shuffle=True)  # doctest: +SKIP
        >>> model.fit(ds, epochs=10, shuffle=False)  # doctest: +SKIP
    """

    def __init__(self, inputs: BoxInputs, particles, label_scaler: LabelScaler | None = None,
                 batch_size: int = 64, shuffle: bool = False, seed: int = 0, workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10):
        batch_size = check_int("batch_size", batch_size, minimum=1)
        workers = check_int("workers", workers, minimum=1)
        max_queue_size = check_int("max_queue_size", max_queue_size, minimum=1)
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        if len(particles) == 0:
            raise ValueError("particles must not be empty. Received: an empty ParticleSet")
        if label_scaler is not None:
            check_finite_array("log_mass", particles.log_mass, "particles")
        self.inputs, self.particles, self.label_scaler = inputs, particles, label_scaler
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.epoch = 0
        self._order = self._make_order()

    def _make_order(self):
        n = len(self.particles)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __len__(self) -> int:
        return math.ceil(len(self.particles) / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.inputs(self.particles.sim_index[rows], self.particles.particle_id[rows])
        if self.label_scaler is None:
            return (x,)
        y = self.label_scaler.transform(self.particles.log_mass[rows]).astype(np.float32)
        return x, y[:, None]

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch``'s order next (a resumed ``fit`` starts at its completed epochs)."""
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._order = self._make_order()


def predict_log_mass(model, inputs: BoxInputs, particles, label_scaler: LabelScaler,
                     batch_size: int = 256, verbose="auto") -> np.ndarray:
    """Predicted log10 M (Msun/h) for every particle of ``particles``, in order.

    The model's first output column is the scaled prediction (a second column,
    if present, carries the Cauchy scale and is ignored).
    """
    ds = HaloDataset(inputs, particles, None, batch_size=batch_size, shuffle=False)
    y = np.asarray(model.predict(ds, verbose=verbose))
    y = y.reshape(y.shape[0], -1)[:, 0]
    if y.shape[0] != len(particles):
        raise RuntimeError(f"model returned {y.shape[0]} predictions for {len(particles)} particles")
    return label_scaler.inverse_transform(y)
