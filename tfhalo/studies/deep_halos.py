"""The deep-halo study, end to end, as library code.

Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
insights into cosmological structure formation", arXiv:2011.10577: a 3-D CNN
predicts the mass of the halo each dark-matter particle ends up in from the
initial density around it.

From a suite of simulations (used, generated or extended by
:func:`tfhalo.studies.common.ensure_suite`) :func:`run` builds training /
validation / test particle sets from different simulations, trains the CNN on
each input configuration, fits the GBT baseline, evaluates everything on the
test set (Pearson r and KL divergences with bootstrap 68% intervals over test
particles) and writes ``report.md``, ``results.json`` and ``figures/`` into ``out``.

Input configurations:
    raw        initial density sub-box around the particle's lattice site
    averaged   the same box, spherically averaged in 20 shells (paper Fig. 3)
    z0         z=0 density in a 1.5 Mpc/h box around the final position (paper Fig. 4)
    multipole  raw input, a network of l=0 kernels made exactly invariant under
               the cube's 48 rotations and reflections

Presets (:data:`PRESETS`):
    quick      2 CPU cores, the whole study in about 20 minutes: 64^3 / 40 Mpc/h
               simulations, 17^3 boxes, a narrow network, a few thousand
               particles, a few epochs, learning rate 1e-3 (the paper's 5e-5
               learns next to nothing in so few steps).
    paper      75^3 boxes, the published network, 200k training particles from
               20 simulations, lr 5e-5, batch 64 (needs a GPU).

Resumable: rerun with the same arguments to continue. Particle sets
(``out/particle_sets.npz``) and test predictions (``out/predictions/``, the GBT's too) are
:class:`~tfhalo.studies.common.Cache` files; each model's ``fit`` resumes
from ``out/models/CONFIG/backup`` (Keras ``BackupAndRestore``) and a finished
configuration (``out/models/CONFIG/DONE``) is not trained again. Across a
resume the best weights (``best.weights.h5``, restored at the end), early
stopping's patience, the dataset's shuffling epoch and the history (rebuilt
from ``training_log.csv``) continue where they stopped. Every cache records
the settings it was made with; running into the same ``out`` with other data
or model settings raises :class:`~tfhalo.studies.common.StaleCacheError`
before any work (``overwrite=True`` discards the stale files instead).

Example:
    >>> from tfhalo.studies import deep_halos
    >>> cfg = deep_halos.Config.preset("quick", seed=0, configs=("raw", "averaged"))
    >>> cfg.n_sims
    6
    >>> results = deep_halos.run(cfg, suite="runs/demo/suite", out="runs/demo/deep_halos")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from tfhalo.studies import common
from tfhalo.studies.common import StaleCacheError, StudyInputError
from tfhalo.validation import check_bool, check_choice, check_float, check_int, check_range, check_seed

__all__ = [
    "ALPHA", "CONFIGS", "Config", "PRESETS", "StaleCacheError", "check_caches", "data_key", "evaluate",
    "evaluation_intervals", "fit_resumable", "model_key", "particle_sets", "read_training_log", "run",
    "train_config", "training_callbacks",
]

CONFIGS = ("raw", "averaged", "z0", "multipole")
#: L2 strength per configuration: raw 10^-2.5 and averaged 10^-4.3 as in Lucie-Smith et al. (2020),
#: arXiv:2011.10577; z0 and multipole use the raw value.
ALPHA = {"raw": 10**-2.5, "averaged": 10**-4.3, "z0": 10**-2.5, "multipole": 10**-2.5}
#: z=0 density transforms of :class:`tfhalo.data.Z0BoxBuilder` (``tfhalo.data.z0.Z0_TRANSFORMS``,
#: repeated so that checking a Config does not import TensorFlow with ``tfhalo.data``; a test keeps them equal).
Z0_TRANSFORMS = ("delta", "log1p")
BEST_WEIGHTS = "best.weights.h5"
SETS_FILE = "particle_sets.npz"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one deep-halo study; validated on construction (frozen).

    The defaults are the ``quick`` preset; :meth:`preset` gives a named one with overrides.

    Attributes:
        preset_name: the preset these settings started from (recorded in the report).
        sim_preset: :data:`tfhalo.sim.PRESETS` name of a generated suite.
        n_sims: simulations (>= 3: training, validation and test come from different ones).
        seed: master seed of everything: suite, split, particle sets, shuffling,
            initial weights, GBT, the random model and the bootstrap.
        subbox_size: side of the input boxes in voxels.
        conv_filters, pool_after: filters of each convolution and whether a pooling follows it.
        dense_units: widths of the dense layers.
        n_train, n_validation, n_test: particles in each set.
        epochs, batch_size, learning_rate, patience: training (``patience``: early stopping, epochs).
        log_mass_range: ``(low, high)`` log10 M of the particles used; ``None``: from 30
            particles to the heaviest training halo.
        balanced: sample particles evenly across mass.
        z0_width: side of the z=0 box, Mpc/h; z0_transform: ``"delta"`` or ``"log1p"``.
        workers, use_multiprocessing: ``keras.utils.PyDataset`` loading.
        standardizer_particles: particles the input standardiser is fitted on.
        predict_batch_size: batch size of validation and prediction.
        configs: input configurations to train, a subset of :data:`CONFIGS`.
        gbt: fit the GBT baseline on spherical overdensities.
        export: also export each model as a TF SavedModel.
        n_boot: bootstrap replicates of the 68% intervals.
        devices: devices to train each CNN on, data parallel (:func:`tfhalo.distribute.data_parallel`:
            the backend's GPUs, or its CPUs without GPUs); 1 (default): no distribution. With more,
            every training and validation batch must split evenly over them: ``batch_size`` and
            ``predict_batch_size`` multiples of ``devices``, and so the last, partial batches
            (``n_train % batch_size``, ``n_validation % predict_batch_size``). A training step on
            ``n`` devices is the one-device step on the same (global) batch up to float rounding,
            so ``devices`` is not part of the cache key: a run may resume on another number of devices.
    """

    preset_name: str = "quick"
    sim_preset: str = "quick"
    n_sims: int = 6
    seed: int = 0
    subbox_size: int = 17
    conv_filters: Tuple[int, ...] = (8, 16, 16, 32)
    pool_after: Tuple[bool, ...] = (False, True, True, True)
    dense_units: Tuple[int, ...] = (32, 16)
    n_train: int = 3000
    n_validation: int = 500
    n_test: int = 3000
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 3
    log_mass_range: Optional[Tuple[float, float]] = None
    balanced: bool = False
    z0_width: float = 1.5
    z0_transform: str = "log1p"
    workers: int = 2
    use_multiprocessing: bool = False
    standardizer_particles: int = 1000
    predict_batch_size: int = 256
    configs: Tuple[str, ...] = CONFIGS
    gbt: bool = True
    export: bool = True
    n_boot: int = 500
    devices: int = 1

    def __post_init__(self):
        from tfhalo.sim.suite import PRESETS as SIM_PRESETS

        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        check_choice("preset_name", self.preset_name, tuple(PRESETS))
        check_choice("sim_preset", self.sim_preset, tuple(SIM_PRESETS))
        set_("n_sims", check_int("n_sims", self.n_sims, minimum=3))
        set_("seed", check_seed("seed", self.seed, allow_none=False))
        for name in ("subbox_size", "n_train", "n_validation", "n_test", "epochs", "batch_size", "workers",
                     "standardizer_particles", "predict_batch_size"):
            set_(name, check_int(name, getattr(self, name), minimum=1))
        set_("n_boot", check_int("n_boot", self.n_boot, minimum=10))
        set_("patience", check_int("patience", self.patience, minimum=0))
        set_("learning_rate", check_float("learning_rate", self.learning_rate, positive=True))
        set_("z0_width", check_float("z0_width", self.z0_width, positive=True))
        check_choice("z0_transform", self.z0_transform, Z0_TRANSFORMS)
        for name in ("balanced", "use_multiprocessing", "gbt", "export"):
            set_(name, check_bool(name, getattr(self, name)))
        set_("conv_filters", _int_tuple("conv_filters", self.conv_filters))
        set_("dense_units", _int_tuple("dense_units", self.dense_units))
        pool = self.pool_after
        if isinstance(pool, (str, bytes)) or not hasattr(pool, "__len__") or len(pool) != len(self.conv_filters):
            raise ValueError(f"pool_after must hold one True/False per convolution ({len(self.conv_filters)}). "
                             f"Received: pool_after={pool!r}")
        set_("pool_after", tuple(check_bool(f"pool_after[{i}]", v) for i, v in enumerate(pool)))
        configs = self.configs
        if isinstance(configs, str) or not hasattr(configs, "__len__") or not len(configs):
            raise ValueError(f"configs must be a non-empty sequence of {CONFIGS}. Received: configs={configs!r}")
        for c in configs:
            check_choice("configs", c, CONFIGS)
        if len(set(configs)) != len(configs):
            raise ValueError(f"configs must not repeat a configuration. Received: configs={tuple(configs)!r}")
        set_("configs", tuple(configs))
        if self.log_mass_range is not None:
            set_("log_mass_range", check_range("log_mass_range", self.log_mass_range))
        set_("devices", check_int("devices", self.devices, minimum=1))
        _check_batch_splits(self, self.n_train, self.n_validation)

    @classmethod
    def preset(cls, name: str, **overrides) -> "Config":
        """The preset ``name`` (``"quick"`` or ``"paper"``) with fields replaced by ``overrides``.

        Raises:
            ValueError: unknown preset or field, or an invalid value (naming the field).

        Example:
            >>> Config.preset("paper", epochs=3).epochs
            3
        """
        check_choice("preset", name, tuple(PRESETS))
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown Config fields {unknown}. Expected a subset of {sorted(fields)}")
        return cls(**{**PRESETS[name], "preset_name": name, **overrides})

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_batch_splits(config: "Config", n_train: int, n_validation: int) -> None:
    """Every training and validation batch must split evenly over ``config.devices`` (ValueError)."""
    from tfhalo.distribute import check_batch_split

    check_batch_split(config.devices, n_train, config.batch_size, "n_train", "batch_size")
    check_batch_split(config.devices, n_validation, config.predict_batch_size, "n_validation",
                      "predict_batch_size")


def _int_tuple(name, value) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not len(value):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers. Received: {name}={value!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


#: Named settings; :meth:`Config.preset` applies overrides on top.
PRESETS = {
    "quick": {
        "sim_preset": "quick", "n_sims": 6, "subbox_size": 17,
        "conv_filters": (8, 16, 16, 32), "pool_after": (False, True, True, True),
        "dense_units": (32, 16), "n_train": 3000, "n_validation": 500, "n_test": 3000,
        "epochs": 8, "batch_size": 64, "learning_rate": 1e-3, "patience": 3,
        "log_mass_range": None, "balanced": False, "z0_width": 1.5, "z0_transform": "log1p",
        "workers": 2, "standardizer_particles": 1000, "predict_batch_size": 256, "n_boot": 500,
    },
    "paper": {
        "sim_preset": "paper", "n_sims": 22, "subbox_size": 75,
        "conv_filters": (32, 32, 64, 128, 128, 128),
        "pool_after": (False, True, True, True, True, True),
        "dense_units": (256, 128), "n_train": 200_000, "n_validation": 5000, "n_test": 50_000,
        "epochs": 100, "batch_size": 64, "learning_rate": 5e-5, "patience": 10,
        "log_mass_range": (11.0, 13.4), "balanced": False, "z0_width": 1.5,
        "z0_transform": "delta", "workers": 4, "standardizer_particles": 5000,
        "predict_batch_size": 256, "n_boot": 1000,
    },
}


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[deep_halos] {msg}", flush=True)


# ---------------------------------------------------------------------------- cache keys

#: Settings that decide the particle sets (with the suite's path).
DATA_FIELDS = ("sim_preset", "n_sims", "seed", "n_train", "n_validation", "n_test", "log_mass_range", "balanced")
#: Further settings that decide a trained model and its predictions.
MODEL_FIELDS = DATA_FIELDS + ("subbox_size", "conv_filters", "pool_after", "dense_units", "epochs", "batch_size",
                              "learning_rate", "patience", "z0_width", "z0_transform", "standardizer_particles")


def data_key(config: Config, suite) -> dict:
    """Cache key of the particle sets: :data:`DATA_FIELDS` and the suite's absolute path."""
    return common.normalize_key({**{k: getattr(config, k) for k in DATA_FIELDS},
                                 "suite": str(Path(suite).resolve())})


def model_key(config: Config, suite, name: str) -> dict:
    """Cache key of configuration ``name``'s model and test predictions."""
    return common.normalize_key({**{k: getattr(config, k) for k in MODEL_FIELDS},
                                 "suite": str(Path(suite).resolve()), "config": name, "alpha": ALPHA[name],
                                 "rotation_invariant": name == "multipole"})


def _caches(config: Config, suite, out: Path, name: str):
    key = model_key(config, suite, name)
    return common.Cache(out / "models" / name, key), common.Cache(out / "predictions", key)


def check_caches(config: Config, suite, out, overwrite: bool = False, progress: bool = True) -> None:
    """Before any work: every cache in ``out`` must match the current settings.

    With ``overwrite`` stale caches are deleted instead (stale particle sets
    take every model and prediction with them).

    Raises:
        StaleCacheError: naming the file and the differing keys.
    """
    out = Path(out)
    data = common.Cache(out, data_key(config, suite))
    diff = data.differences(SETS_FILE)
    if diff:
        if not overwrite:
            raise StaleCacheError(data.path(SETS_FILE), diff)
        _log(progress, f"overwrite: discarding particle sets, models and predictions in {out}")
        data.discard(SETS_FILE)
        for sub in ("models", "predictions"):  # all made from the old sets
            shutil.rmtree(out / sub, ignore_errors=True)
    for name in config.configs:
        models, preds = _caches(config, suite, out, name)
        stale = None
        if models.directory.is_dir() and not models.exists("SETTINGS.json"):
            stale = (models.path("SETTINGS.json"), {"<settings not recorded>": (None, "current settings")})
        for cache, fname in ((models, "SETTINGS.json"), (models, "DONE"), (preds, f"{name}.npz")):
            diff = cache.differences(fname)
            if diff and stale is None:
                stale = (cache.path(fname), diff)
        if stale is None:
            continue
        if not overwrite:
            raise StaleCacheError(*stale)
        _log(progress, f"overwrite: discarding {models.directory} and its predictions")
        shutil.rmtree(models.directory, ignore_errors=True)
        preds.discard(f"{name}.npz")


# ---------------------------------------------------------------------------------- data


def default_log_mass_range(sims, split, min_members: int = 30) -> tuple:
    """Mass range from ``min_members`` particles to the heaviest training halo (log10 Msun/h)."""
    m_p = max(s.particle_mass for s in sims)
    heaviest = max(float(sims[i].halos.mass.max()) for i in split.train if len(sims[i].halos))
    return (float(np.log10(min_members * m_p)), float(np.log10(heaviest)))


_SET_NAMES = ("train", "validation", "test")
_SET_FIELDS = ("sim_index", "particle_id", "log_mass", "r_over_r200")


def particle_sets(sims, config: Config, suite, out) -> tuple:
    """Training, validation and test particles (cached in ``out/particle_sets.npz``).

    Returns:
        ``({"train", "validation", "test": ParticleSet, "split": SimulationSplit}, (low, high))``.

    Raises:
        StaleCacheError: the cached sets were made with other settings.
    """
    from tfhalo.data import ParticleSet, SimulationSplit, build_particle_sets, split_simulations

    cache = common.Cache(out, data_key(config, suite))
    z = cache.load(SETS_FILE)
    if z is not None:
        sets = {name: ParticleSet(*(z[f"{name}_{f}"] for f in _SET_FIELDS)) for name in _SET_NAMES}
        sets["split"] = SimulationSplit(*(tuple(int(i) for i in z[f"split_{name}"]) for name in _SET_NAMES))
        return sets, tuple(float(v) for v in z["log_mass_range"])
    split = split_simulations(len(sims), seed=config.seed)
    lmr = config.log_mass_range or default_log_mass_range(sims, split)
    sets = build_particle_sets(sims, config.n_train, config.n_validation, config.n_test, log_mass_range=lmr,
                               balanced=config.balanced, split=split, seed=config.seed)
    arrays = {f"{name}_{f}": getattr(sets[name], f) for name in _SET_NAMES for f in _SET_FIELDS}
    arrays.update({f"split_{name}": np.asarray(getattr(split, name), dtype=np.int64) for name in _SET_NAMES})
    cache.save(SETS_FILE, log_mass_range=np.asarray(lmr, dtype=np.float64), **arrays)
    return sets, tuple(float(v) for v in lmr)


# ------------------------------------------------------------------------------ training


def read_training_log(path) -> dict:
    """History ``{metric: [value per epoch]}`` from a CSV log, complete across resumes.

    Rows are keyed by epoch and a later row replaces an earlier one for the
    same epoch (an epoch redone after an interruption), so every epoch
    appears once, in order. The ``"epoch"`` list is included.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        return {}
    by_epoch = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                by_epoch[int(row["epoch"])] = {k: float(v) for k, v in row.items()
                                               if k != "epoch" and v not in (None, "")}
            except (KeyError, ValueError):
                continue  # a header repeated by an appended log, or a torn last line
    epochs = sorted(by_epoch)
    keys = sorted({k for row in by_epoch.values() for k in row})
    hist = {k: [by_epoch[e].get(k, float("nan")) for e in epochs] for k in keys}
    if epochs:
        hist["epoch"] = epochs
    return hist


def _completed_epochs(run_dir: Path) -> int:
    """Epochs finished before an interruption (BackupAndRestore's own record), 0 for a fresh run."""
    meta = run_dir / "backup" / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _resumable_early_stopping(patience: int, prior_best, prior_wait: int):
    """EarlyStopping whose best value and patience counter continue from before a resume.

    Best weights are not kept here (they would only cover this call): the
    ``best.weights.h5`` checkpoint holds them across resumes.
    """
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if prior_best is not None:
                self.best, self.wait = float(prior_best), int(prior_wait)

    return ResumableEarlyStopping(monitor="val_loss", patience=int(patience), restore_best_weights=False)


def training_callbacks(run_dir, patience: int, initial_epoch: int = 0, progress: bool = True) -> list:
    """Resume (BackupAndRestore), best-weights checkpoint, early stopping, CSV and TensorBoard logs.

    ``initial_epoch`` is the number of epochs already completed; the
    checkpoint's threshold and early stopping's best value and patience
    counter are restored from the CSV log of those epochs.
    """
    import importlib.util

    import keras

    run_dir = Path(run_dir)
    past = read_training_log(run_dir / "training_log.csv")
    prior = [(e, v) for e, v in zip(past.get("epoch", []), past.get("val_loss", [])) if e < initial_epoch]
    prior_best = prior_wait = None
    if prior and (run_dir / BEST_WEIGHTS).is_file():
        best_epoch, prior_best = min(prior, key=lambda ev: ev[1])
        prior_wait = initial_epoch - 1 - best_epoch
    else:
        (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)  # from an unrelated fit, not this run's epochs
    callbacks = [
        # BackupAndRestore runs last at each epoch end: a crash after the log row
        # but before the backup redoes the epoch, and read_training_log keeps the newer row.
        keras.callbacks.CSVLogger(str(run_dir / "training_log.csv"), append=True),
        keras.callbacks.ModelCheckpoint(str(run_dir / BEST_WEIGHTS), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=prior_best),
        _resumable_early_stopping(patience, prior_best, prior_wait or 0),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch",
                                                     profile_batch=0))
    else:  # tf.summary needs the tensorboard package; the CSV log still records every epoch
        _log(progress, "tensorboard is not installed: TensorBoard logs skipped (CSV log kept)")
    return callbacks


def fit_resumable(model, train_ds, val_ds, run_dir, epochs: int, patience: int,
                  extra_callbacks=(), verbose=2) -> dict:
    """``model.fit`` that resumes from ``run_dir/backup`` after an interruption.

    Before ``fit`` the training dataset's epoch counter is set to the number
    of completed epochs, so a resumed run shuffles as an uninterrupted one.
    After it the weights of the best validation loss over *all* epochs
    (``best.weights.h5``) are loaded.

    Args:
        model: a compiled Keras model.
        train_ds, val_ds: training and validation datasets (``keras.utils.PyDataset``).
        run_dir: directory of the logs, checkpoints and backup (created).
        epochs: total epochs, counting those of earlier, interrupted calls.
        patience: early-stopping patience in epochs, counted across interruptions.
        extra_callbacks: further Keras callbacks.
        verbose: Keras ``fit`` verbosity.

    Returns:
        The history of every epoch, this call's and earlier ones' (from the CSV log).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = _completed_epochs(run_dir)
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(done)
    callbacks = training_callbacks(run_dir, patience, initial_epoch=done, progress=bool(verbose))
    # HaloDataset shuffles itself, seeded; Keras would re-shuffle its batches with the unseeded `random`.
    model.fit(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=callbacks + list(extra_callbacks),
              verbose=verbose, shuffle=False)
    hist = read_training_log(run_dir / "training_log.csv")
    if (run_dir / BEST_WEIGHTS).is_file():
        model.load_weights(run_dir / BEST_WEIGHTS)
    return hist


def build_model(name: str, config: Config, input_shape):
    """The CNN of configuration ``name`` (:func:`tfhalo.models.halo_cnn`)."""
    from tfhalo.models import halo_cnn

    return halo_cnn(
        input_shape=tuple(input_shape), conv_filters=config.conv_filters, pool_after=config.pool_after,
        dense_units=config.dense_units, alpha=ALPHA[name], conv_type="multipole" if name == "multipole" else "conv",
        ells=(0,), rotation_invariant=name == "multipole", learning_rate=config.learning_rate, seed=config.seed,
        name=f"halo_cnn_{name}",
    )


def make_inputs(name: str, sims, config: Config):
    """The :class:`tfhalo.data.BoxInputs` of configuration ``name``."""
    from tfhalo.data import BoxInputs

    kind = {"raw": "raw", "averaged": "averaged", "z0": "z0", "multipole": "raw"}[name]
    return BoxInputs(sims, kind=kind, size=config.subbox_size, z0_width=config.z0_width,
                     z0_transform=config.z0_transform)


def train_config(name: str, sims, sets, label_scaler, config: Config, suite, out, progress: bool = True) -> tuple:
    """Train (or resume, or skip if done) configuration ``name`` and predict the test set.

    Returns:
        ``(history dict, (n_test,) predicted log10 M)``.
    """
    from tfhalo.data import HaloDataset, load_trained, predict_log_mass, save_trained
    from tfhalo.distribute import data_parallel
    from tfhalo.evaluation.report import write_results_json

    out = Path(out)
    models, preds = _caches(config, suite, out, name)
    run_dir = models.directory
    history_path = run_dir / "history.json"
    models.check("SETTINGS.json", "DONE")
    pred = preds.load(f"{name}.npz")
    if models.exists("DONE") and pred is not None:
        _log(progress, f"{name}: already trained (delete {models.path('DONE')} to retrain)")
        hist = json.loads(history_path.read_text()) if history_path.is_file() else {}
        return hist, pred["predicted_log_mass"]
    t0 = time.time()
    if not models.exists("DONE"):
        inputs = make_inputs(name, sims, config)
        inputs.fit_standardizer(sets["train"], max_particles=config.standardizer_particles, seed=config.seed)
        loading = dict(workers=config.workers, use_multiprocessing=config.use_multiprocessing)
        train_ds = HaloDataset(inputs, sets["train"], label_scaler, batch_size=config.batch_size, shuffle=True,
                               seed=config.seed, **loading)
        val_ds = HaloDataset(inputs, sets["validation"], label_scaler, batch_size=config.predict_batch_size,
                             **loading)
        models.save("SETTINGS.json", {})  # before training, so an interrupted run is checked on resume
        # The weights must be created inside the scope to exist on every device.
        with data_parallel(config.devices):
            model = build_model(name, config, inputs.input_shape)
            on = f" on {config.devices} devices" if config.devices > 1 else ""
            _log(progress, f"{name}: training {model.count_params():,} parameters{on} on {len(sets['train'])} "
                           f"particles, {inputs.input_shape[:3]} boxes")
            hist = fit_resumable(model, train_ds, val_ds, run_dir, config.epochs, config.patience,
                                 verbose=2 if progress else 0)
        save_trained(model, run_dir, inputs.standardizer, label_scaler, inputs.config(), export=config.export,
                     config=name, alpha=ALPHA[name])
        write_results_json(history_path, hist)
        models.save("DONE", {"seconds": round(time.time() - t0)})
    else:  # trained, predictions missing: predict with the scalers saved beside the model
        trained = load_trained(run_dir)
        model, label_scaler, inputs = trained.model, trained.label_scaler, trained.inputs_for(sims)
        hist = json.loads(history_path.read_text()) if history_path.is_file() else {}
    pred = predict_log_mass(model, inputs, sets["test"], label_scaler, batch_size=config.predict_batch_size,
                            verbose=0)
    preds.save(f"{name}.npz", predicted_log_mass=pred)
    _log(progress, f"{name}: done in {time.time() - t0:.0f} s")
    return hist, pred


# ---------------------------------------------------------------------------- evaluation

#: ``D_KL(p || q)`` pairs reported (the paper's three first).
KL_PAIRS = (("raw", "averaged"), ("raw", "gbt"), ("raw", "random"), ("raw", "multipole"), ("averaged", "gbt"),
            ("raw", "z0"))
N_MASS_BINS = 3


def _batched_kl(p, q, weights):
    from tfhalo.evaluation.metrics import kl_divergence

    return kl_divergence(p, q, weights=weights)


def evaluation_intervals(true_log_mass, r_over_r200, predictions: dict, evaluation: dict, log_mass_range,
                         n_boot: int, seed: int, level: float = 0.68) -> dict:
    """Bootstrap intervals over test particles for every Pearson r and KL divergence of ``evaluation``.

    Percentile intervals moved by the estimate minus the replicates' median
    (``median_bias_correct`` of :func:`tfhalo.evaluation.metrics.bootstrap_interval`).
    Each subset (all particles, a halo region, a mass bin, a mass bin within a
    region) is resampled on its own; a number that ``evaluation`` reports as
    null (a subset too small) gets a null interval.

    Args:
        true_log_mass, r_over_r200: ``(P,)`` of the test particles.
        predictions: ``{model: (P,) predicted log10 M}``.
        evaluation: :func:`tfhalo.evaluation.evaluate_predictions` of the same inputs.
        log_mass_range: its mass range; n_boot, seed, level: of :func:`tfhalo.evaluation.metrics.bootstrap_interval`.

    Returns:
        ``{"level", "n_boot", "seed", "method", "models": {model: {"all": [lo, hi], "by_region": {...},
        "by_mass_bin": {...}}}, "kl": {"p||q": {"all": ..., "by_region": ..., "by_mass_bin_and_region": ...}}}``.
    """
    from tfhalo.evaluation.metrics import bootstrap_interval, pearson_r, residuals
    from tfhalo.evaluation.splits import mass_bin_edges, mass_bin_masks, radial_masks

    true = np.asarray(true_log_mass, dtype=np.float64)
    regions = radial_masks(r_over_r200)
    edges = mass_bin_edges(log_mass_range, len(evaluation["mass_bins"]))
    bins = dict(zip(evaluation["mass_bins"], mass_bin_masks(true, edges)))
    everything = np.ones(true.shape, bool)
    # Centred on the estimates: a KL divergence of resampled (partly repeated) residuals is biased upward.
    boot = dict(n_boot=n_boot, seed=seed, level=level, median_bias_correct=True)

    def interval(value, statistic, *arrays, batched=False):
        if value is None:
            return None
        return list(bootstrap_interval(statistic, *arrays, batched=batched, **boot))

    models = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=np.float64)
        entry = evaluation["models"][name]
        r_of = lambda stats: None if stats is None else stats["pearson_r"]  # noqa: E731
        models[name] = {
            "all": interval(r_of(entry["all"]), pearson_r, pred, true),
            "by_region": {k: interval(r_of(entry["by_region"][k]), pearson_r, pred[m], true[m])
                          for k, m in regions.items()},
            "by_mass_bin": {k: interval(r_of(entry["by_mass_bin"][k]), pearson_r, pred[m], true[m])
                            for k, m in bins.items()},
        }
    res = {name: residuals(pred, true) for name, pred in predictions.items()}
    kl = {}
    for pair, entry in evaluation["kl"].items():
        p, q = res[pair.split("||")[0]], res[pair.split("||")[1]]
        one = lambda value, m: interval(value, _batched_kl, p[m], q[m], batched=True)  # noqa: E731
        kl[pair] = {
            "all": one(entry["all"], everything),
            "by_region": {k: one(entry["by_region"][k], m) for k, m in regions.items()},
            "by_mass_bin_and_region": {f"{b}/{r}": one(entry["by_mass_bin_and_region"][f"{b}/{r}"], bm & rm)
                                       for b, bm in bins.items() for r, rm in regions.items()},
        }
    return {"level": level, "n_boot": n_boot, "seed": seed,
            "method": "percentile bootstrap over the test particles of each subset (paired across models), "
                      "shifted by the estimate minus the replicates' median",
            "models": models, "kl": kl}


def evaluate(sims, sets, log_mass_range, histories: dict, predictions: dict, config: Config, suite, out,
             progress: bool = True) -> dict:
    """Baselines, statistics with bootstrap intervals, figures, ``results.json`` and ``report.md``.

    Args:
        sims: the simulations; sets: :func:`particle_sets`'s sets.
        histories, predictions: ``{configuration: ...}`` from :func:`train_config`.

    Returns:
        The results written to ``out/results.json``.
    """
    from tfhalo.evaluation import (GBTBaseline, default_sphere_radii, evaluate_predictions, pearson_r,
                                   random_predictions, residual_histograms, residuals, training_curves,
                                   violin_plot)
    from tfhalo.evaluation.report import summary_rows, write_report

    out = Path(out)
    test, lmr = sets["test"], tuple(log_mass_range)
    preds = dict(predictions)
    if config.gbt:
        # Cheap to redo, so a cached prediction made with other settings is replaced, not refused.
        gbt_cache = common.Cache(out / "predictions", {**data_key(config, suite), "config": "gbt"}, overwrite=True)
        cached = gbt_cache.load("gbt.npz")
        if cached is not None:
            preds["gbt"] = cached["predicted_log_mass"]
        else:
            t0 = time.time()
            radii = default_sphere_radii(sims[test.sim_index[0]])
            gbt = GBTBaseline(radii, seed=config.seed).fit(sims, sets["train"])
            preds["gbt"] = gbt.predict(sims, test)
            gbt_cache.save("gbt.npz", predicted_log_mass=preds["gbt"])
            _log(progress, f"GBT baseline on {radii.size} sphere radii: {time.time() - t0:.0f} s")
    train_lm = sets["train"].log_mass
    preds["random"] = random_predictions(len(test), (train_lm.min(), train_lm.max()), seed=config.seed + 1)

    ev = evaluate_predictions(test.log_mass, test.r_over_r200, preds, KL_PAIRS, lmr, n_mass_bins=N_MASS_BINS)
    t0 = time.time()
    ev["intervals"] = evaluation_intervals(test.log_mass, test.r_over_r200, preds, ev, lmr,
                                           n_boot=config.n_boot, seed=config.seed)
    _log(progress, f"bootstrap intervals ({config.n_boot} replicates): {time.time() - t0:.0f} s")

    figs = {}
    fig_dir = out / "figures"
    titles = {"raw": "raw density (Fig. 2B)", "averaged": "averaged density", "z0": "z=0 density (Fig. 4)",
              "multipole": "raw density, l=0 multipole CNN", "gbt": "GBT on spherical overdensities"}
    for name, title in titles.items():
        if name in preds:
            figs[f"Violins: {title}"] = violin_plot(test.log_mass, preds[name], fig_dir / f"violins_{name}.png",
                                                    n_bins=12, log_mass_range=lmr, title=title,
                                                    r=pearson_r(preds[name], test.log_mass))
    if "raw" in preds and "averaged" in preds:
        figs["Residuals raw vs averaged by mass bin and halo region (Fig. 3B)"] = residual_histograms(
            test.log_mass, test.r_over_r200,
            {"raw": residuals(preds["raw"], test.log_mass), "averaged": residuals(preds["averaged"], test.log_mass)},
            fig_dir / "residuals_raw_vs_averaged.png", mass_edges=np.linspace(*lmr, N_MASS_BINS + 1))
    if histories:
        figs["Training curves and Cauchy scale gamma"] = training_curves(histories, fig_dir / "training.png")

    notes = [
        f"Preset `{config.preset_name}`: boxes of {config.subbox_size}^3 voxels, network conv filters "
        f"{list(config.conv_filters)}, dense {list(config.dense_units)}, learning rate {config.learning_rate}, "
        f"batch {config.batch_size}, at most {config.epochs} epochs (early stopping patience {config.patience}).",
        "The quick preset is a scaled-down study (small simulations, boxes and networks, few epochs); "
        "its numbers show the pipeline and the sanity ordering, not the paper's precision.",
        f"Intervals in brackets are 68% bootstrap intervals over the test particles ({config.n_boot} "
        f"replicates, seed {config.seed}): the replicates' 16th-84th percentiles, moved by the estimate minus "
        f"their median (KL divergences of resampled residuals, which repeat particles, are biased upward). "
        f"They hold the networks fixed, so they measure the test-set sampling noise, not the training noise.",
        "Everything is seeded from the config's seed: simulations, splits, particle sets, shuffling, the "
        "networks' initial weights (halo_cnn(seed=...)), the GBT, the random model and the bootstrap; no global "
        "RNG is reseeded. Float reductions on multi-threaded CPUs can still differ in the last bits between runs.",
    ]
    results = {
        "study": "deep_halos",
        "summary": summary_rows(ev),
        "config": config.to_dict(),
        "seed": config.seed,
        "machine": common.machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {"suite": str(Path(suite).resolve()), "log_mass_range_used": list(lmr),
                 "n_train": len(sets["train"]), "n_validation": len(sets["validation"]), "n_test": len(test),
                 "split": {k: list(v) for k, v in vars(sets["split"]).items()},
                 "alpha": {c: ALPHA[c] for c in config.configs}},
        "figures": {caption: os.path.relpath(path, out) for caption, path in figs.items()},
        "training": histories,
        "evaluation": ev,
    }
    write_report(out, results, figs, notes=notes)
    return json.loads((out / "results.json").read_text())


# ----------------------------------------------------------------------------------- run


def run(config: Config, suite, out, progress: bool = True, overwrite: bool = False) -> dict:
    """Run the deep-halo study; resumable (rerun the same call to continue).

    Args:
        config: the study's :class:`Config`.
        suite: suite directory, used, generated or extended by
            :func:`tfhalo.studies.common.ensure_suite`.
        out: study directory (created): caches, models, figures, ``report.md``, ``results.json``.
        progress: print progress lines and Keras logs.
        overwrite: discard caches in ``out`` made with other settings instead of raising.

    Returns:
        The contents of ``out/results.json``: ``"summary"`` rows (value, 68% bootstrap
        interval, paper value), ``"config"``, ``"seed"``, ``"machine"``, ``"evaluation"``, ...

    Raises:
        ValueError: ``config`` is not a :class:`Config`.
        StudyInputError: ``out`` or ``suite`` is a file, a cache in ``out`` is stale
            (:class:`StaleCacheError`), the suite is too small, or the backend sees fewer than
            ``config.devices`` devices; all before any work. Also when the suite has too few
            particles for ``n_train`` or ``n_validation`` and the shortened set's last batch does not
            split evenly over ``config.devices`` (before any training).

    Example:
        >>> results = run(Config.preset("quick"), "runs/demo/suite", "runs/demo/deep_halos")  # doctest: +SKIP
        >>> [row["quantity"] for row in results["summary"]][:1]                              # doctest: +SKIP
        ['Pearson r, z=0-density CNN']
    """
    if not isinstance(config, Config):
        raise ValueError(f"config must be a deep_halos.Config. Received: config of type {type(config).__name__}")
    progress, overwrite = check_bool("progress", progress), check_bool("overwrite", overwrite)
    suite, out = common.check_run_paths(suite, out)
    if config.devices > 1:
        from tfhalo.distribute import check_devices

        try:
            check_devices(config.devices)
        except ValueError as err:  # reported like a bad argument (exit 2 from the script)
            raise StudyInputError(str(err)) from None
    check_caches(config, suite, out, overwrite=overwrite, progress=progress)  # a stale out fails in seconds
    from tfhalo.sim import load

    t0 = time.time()
    paths = common.ensure_suite(suite, config.sim_preset, config.n_sims, config.seed, progress=progress)
    sims = [load(p) for p in paths]
    _log(progress, f"{len(sims)} simulations ready ({time.time() - t0:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    sets, lmr = particle_sets(sims, config, suite, out)
    try:  # fewer eligible particles than asked for shorten a set, and with it the last batch
        _check_batch_splits(config, len(sets["train"]), len(sets["validation"]))
    except ValueError as err:
        raise StudyInputError(f"the suite has fewer eligible particles than asked for: {err}") from None
    split = sets["split"]
    _log(progress, f"log10 M range {lmr[0]:.2f}-{lmr[1]:.2f}; particles train/val/test {len(sets['train'])}/"
                   f"{len(sets['validation'])}/{len(sets['test'])} from simulations {list(split.train)}/"
                   f"{list(split.validation)}/{list(split.test)}")
    from tfhalo.data import LabelScaler

    # Scaled over the whole mass range every set is drawn from, so validation and test labels lie in
    # [-1, 1] too (the truncated Cauchy loss has no support outside).
    label_scaler = LabelScaler(*lmr)
    histories, predictions = {}, {}
    for name in config.configs:
        histories[name], predictions[name] = train_config(name, sims, sets, label_scaler, config, suite, out,
                                                          progress=progress)
    results = evaluate(sims, sets, lmr, histories, predictions, config, suite, out, progress=progress)
    _log(progress, "test-set Pearson r: " + ", ".join(
        f"{k} {v['all']['pearson_r']:.3f}" for k, v in results["evaluation"]["models"].items()
        if v["all"]["pearson_r"] is not None))
    _log(progress, f"finished in {time.time() - t0:.0f} s. Report: {(out / 'report.md').resolve()}")
    return results
