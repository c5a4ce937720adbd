"""The deep-halo study of Lucie-Smith et al. (2020), end to end.

From a suite of simulations (generated with ``tfhalo.sim.generate_suite`` if
none is given) this script builds training / validation / test particle sets
from different simulations, trains the CNN on each input configuration,
fits the GBT baseline, evaluates everything on the test set and writes
``report.md`` + ``results.json`` + figures into ``--out``.

Configurations:
    raw        initial density sub-box around the particle's lattice site
    averaged   the same box, spherically averaged in 20 shells (Fig. 3)
    z0         z=0 density in a 1.5 Mpc/h box around the final position (Fig. 4)
    multipole  raw input, network of l=0 (isotropic, rotation-invariant) kernels

Presets:
    quick      2 CPU cores, the whole study in about 20 minutes: 64^3 / 40 Mpc/h
               simulations, 17^3 boxes, a narrow network, a few thousand
               particles, a few epochs, learning rate 1e-3 (the paper's 5e-5
               learns next to nothing in so few steps).
    paper      75^3 boxes, the published network, 200k training particles from
               20 simulations, lr 5e-5, batch 64 (needs a GPU).

Resumable: particle sets are stored in ``OUT/particle_sets.npz``; each model's
``fit`` uses ``BackupAndRestore`` (``OUT/models/CONFIG/backup``) and a finished
configuration (``OUT/models/CONFIG/DONE``) is not trained again; test
predictions are cached in ``OUT/predictions``. Rerun the same command to resume.
Across a resume the best weights (``best.weights.h5``, restored at the end),
early stopping's patience, the dataset's shuffling epoch and the history
(rebuilt from ``training_log.csv``) all continue where they stopped.

Every cache records the settings it was made with; rerunning into the same
``--out`` with different data or model settings raises an error naming the
differing keys (use a fresh ``--out``, or ``--overwrite`` to discard them).

Example:
    python experiments/deep_halos.py --preset quick --out runs/quick
    python experiments/deep_halos.py --preset paper --suite /data/suite --out runs/paper
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tfhalo.atomic import atomic_path  # noqa: E402

CONFIGS = ("raw", "averaged", "z0", "multipole")
#: Regularisation strength per configuration (REFERENCE A: raw 10^-2.5, averaged 10^-4.3).
ALPHA = {"raw": 10**-2.5, "averaged": 10**-4.3, "z0": 10**-2.5, "multipole": 10**-2.5}

PRESETS = {
    "quick": {
        "suite_preset": "quick", "n_sims": 6, "subbox_size": 17,
        "conv_filters": (8, 16, 16, 32), "pool_after": (False, True, True, True),
        "dense_units": (32, 16), "n_train": 3000, "n_validation": 500, "n_test": 3000,
        "epochs": 8, "batch_size": 64, "learning_rate": 1e-3, "patience": 3,
        "log_mass_range": None, "balanced": False, "z0_width": 1.5, "z0_transform": "log1p",
        "workers": 2, "standardizer_particles": 1000, "predict_batch_size": 256,
        "configs": ("raw", "averaged", "z0", "multipole"),
    },
    "paper": {
        "suite_preset": "paper", "n_sims": 22, "subbox_size": 75,
        "conv_filters": (32, 32, 64, 128, 128, 128),
        "pool_after": (False, True, True, True, True, True),
        "dense_units": (256, 128), "n_train": 200_000, "n_validation": 5000, "n_test": 50_000,
        "epochs": 100, "batch_size": 64, "learning_rate": 5e-5, "patience": 10,
        "log_mass_range": (11.0, 13.4), "balanced": False, "z0_width": 1.5,
        "z0_transform": "delta", "workers": 4, "standardizer_particles": 5000,
        "predict_batch_size": 256, "configs": ("raw", "averaged", "z0", "multipole"),
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--suite", type=Path, default=None,
                   help="suite directory; generated there if missing or empty (default OUT/suite)")
    p.add_argument("--out", type=Path, default=None, help="study directory (default runs/deep_halos_PRESET)")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-sims", type=int, default=None, help="simulations to generate")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-validation", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--subbox-size", type=int, default=None, help="box side in voxels")
    p.add_argument("--log-mass-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    p.add_argument("--balanced", action="store_true", default=None, help="balanced sampling across mass")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (epochs)")
    p.add_argument("--workers", type=int, default=None, help="PyDataset workers")
    p.add_argument("--use-multiprocessing", action="store_true")
    p.add_argument("--no-gbt", action="store_true", help="skip the GBT baseline")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--overwrite", action="store_true",
                   help="discard cached particle sets / models made with different settings")
    return p.parse_args(argv)


def resolve_config(args) -> dict:
    """The preset with the command line's overrides applied, validated."""
    cfg = dict(PRESETS[args.preset])
    for key in ("epochs", "batch_size", "learning_rate", "n_sims", "n_train", "n_validation",
                "n_test", "subbox_size", "patience", "workers", "balanced"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    if args.log_mass_range is not None:
        cfg["log_mass_range"] = tuple(args.log_mass_range)
    if args.configs:
        cfg["configs"] = tuple(args.configs)
    # Everything is checked here, before the (long) suite generation.
    from tfhalo.validation import check_choice, check_float, check_int
    from tfhalo.data.particles import _check_mass_range
    from tfhalo.data.z0 import Z0_TRANSFORMS

    for key in ("epochs", "batch_size", "n_train", "n_validation", "n_test", "subbox_size", "workers",
                "standardizer_particles", "predict_batch_size"):
        cfg[key] = check_int(key, cfg[key], minimum=1)
    cfg["n_sims"] = check_int("n_sims", cfg["n_sims"], minimum=3)  # train, validation, test
    cfg["patience"] = check_int("patience", cfg["patience"], minimum=0)
    cfg["learning_rate"] = check_float("learning_rate", cfg["learning_rate"], positive=True)
    cfg["z0_width"] = check_float("z0_width", cfg["z0_width"], positive=True)
    check_choice("z0_transform", cfg["z0_transform"], Z0_TRANSFORMS)
    if cfg["log_mass_range"] is not None:
        try:
            cfg["log_mass_range"] = _check_mass_range(cfg["log_mass_range"])
        except ValueError as err:
            raise ValueError(f"--log-mass-range: {err}") from None
        if not all(np.isfinite(cfg["log_mass_range"])):
            raise ValueError(f"log_mass_range must be finite. Received: log_mass_range={cfg['log_mass_range']}")
    cfg["preset"], cfg["seed"] = args.preset, int(args.seed)
    cfg["use_multiprocessing"] = bool(args.use_multiprocessing)
    cfg["overwrite"] = bool(getattr(args, "overwrite", False))
    return cfg


# ------------------------------------------------------------------- cache keys

#: Settings that decide the particle sets.
DATA_KEYS = ("suite", "suite_preset", "n_sims", "seed", "n_train", "n_validation", "n_test",
             "log_mass_range", "balanced")
#: Further settings that decide a trained model (on top of DATA_KEYS).
MODEL_KEYS = DATA_KEYS + ("subbox_size", "conv_filters", "pool_after", "dense_units", "epochs",
                          "batch_size", "learning_rate", "patience", "z0_width", "z0_transform",
                          "standardizer_particles")


def cache_key(cfg: dict, keys, **extra) -> dict:
    """The JSON-normalised settings ``keys`` of ``cfg`` (tuples become lists)."""
    return json.loads(json.dumps({**{k: cfg.get(k) for k in keys}, **extra}))


class StaleCacheError(ValueError):
    """A cache in --out was made with different settings."""


def check_cache_key(what: str, stored, current: dict, where: Path) -> None:
    """Raise :class:`StaleCacheError` naming the keys where ``stored`` differs from ``current``."""
    if stored == current:
        return
    if not isinstance(stored, dict):
        diff = ["<settings not recorded>"]
    else:
        diff = [f"{k}: cached {stored.get(k)!r}, now {current.get(k)!r}"
                for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    raise StaleCacheError(
        f"{what} in {where} was made with different settings ({'; '.join(diff)}). "
        f"Use a fresh --out directory, or pass --overwrite to discard it."
    )


# --------------------------------------------------------------------------- data


def load_or_generate_suite(suite_dir: Path, cfg: dict):
    """Simulations of ``suite_dir``; generate the preset's suite there if it has none."""
    from tfhalo.sim import generate_suite, load

    suite_dir = Path(suite_dir)
    existing = sorted(suite_dir.glob("*.h5")) if suite_dir.is_dir() else []
    if existing and not (suite_dir / "suite.json").is_file():
        paths = existing  # a user's directory of simulation files
    else:
        print(f"[deep_halos] suite: {suite_dir} ({cfg['n_sims']} x {cfg['suite_preset']} simulations; "
              f"generated where missing)", flush=True)
        paths = generate_suite(suite_dir, preset=cfg["suite_preset"], n_sims=cfg["n_sims"], seed=cfg["seed"])
    sims = [load(p) for p in paths]
    if len(sims) < 3:
        raise ValueError(f"the study needs at least 3 simulations (train, validation, test). "
                         f"Received: {len(sims)} in {suite_dir}")
    return sims


def default_log_mass_range(sims, split, min_members: int = 30):
    """Quick-preset mass range: from ``min_members`` particles to the heaviest training halo."""
    m_p = max(s.particle_mass for s in sims)
    heaviest = max(float(sims[i].halos.mass.max()) for i in split.train if len(sims[i].halos))
    return (float(np.log10(min_members * m_p)), float(np.log10(heaviest)))


def _stored_settings(path: Path):
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return json.loads(str(z["meta"])).get("settings")
        return json.loads(path.read_text()).get("settings")
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # an unreadable or pre-fingerprint cache: treated as different


def check_caches(cfg: dict, out: Path) -> None:
    """Before any work: every cache in ``out`` must match the current settings.

    With ``cfg["overwrite"]`` stale caches are deleted instead (particle sets
    take every model and prediction with them); otherwise
    :class:`StaleCacheError` names the differing keys.
    """
    import shutil

    sets_path = out / "particle_sets.npz"
    if sets_path.is_file():
        try:
            check_cache_key("particle_sets.npz", _stored_settings(sets_path), cache_key(cfg, DATA_KEYS), out)
        except StaleCacheError:
            if not cfg.get("overwrite"):
                raise
            print(f"[deep_halos] --overwrite: discarding particle sets, models and predictions in {out}",
                  flush=True)
            sets_path.unlink()
            for sub in ("models", "predictions"):  # all made from the old sets
                shutil.rmtree(out / sub, ignore_errors=True)
    for config in cfg["configs"]:
        run_dir = out / "models" / config
        marker = run_dir / "SETTINGS.json"  # written when training starts, so resumes are checked too
        if not marker.is_file() and not run_dir.is_dir():
            continue
        try:
            check_cache_key(f"model {config!r}", _stored_settings(marker), model_key(cfg, config), run_dir)
        except StaleCacheError:
            if not cfg.get("overwrite"):
                raise
            print(f"[deep_halos] --overwrite: discarding {run_dir}", flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            (out / "predictions" / f"{config}.npz").unlink(missing_ok=True)


def model_key(cfg: dict, config: str) -> dict:
    return cache_key(cfg, MODEL_KEYS, config=config, alpha=ALPHA[config],
                     rotation_invariant=config == "multipole")


def particle_sets(sims, cfg, out: Path):
    from tfhalo.data import ParticleSet, SimulationSplit, build_particle_sets, split_simulations

    path = out / "particle_sets.npz"
    key = cache_key(cfg, DATA_KEYS)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        check_cache_key("particle_sets.npz", meta.get("settings"), key, out)
        sets = {name: ParticleSet(z[f"{name}_sim_index"], z[f"{name}_particle_id"], z[f"{name}_log_mass"],
                                  z[f"{name}_r_over_r200"]) for name in ("train", "validation", "test")}
        sets["split"] = SimulationSplit(**{k: tuple(v) for k, v in meta["split"].items()})
        return sets, tuple(meta["log_mass_range"])
    split = split_simulations(len(sims), seed=cfg["seed"])
    lmr = cfg["log_mass_range"] or default_log_mass_range(sims, split)
    sets = build_particle_sets(sims, cfg["n_train"], cfg["n_validation"], cfg["n_test"],
                               log_mass_range=lmr, balanced=cfg["balanced"], split=split,
                               seed=cfg["seed"])
    arrays = {f"{name}_{field}": getattr(sets[name], field)
              for name in ("train", "validation", "test")
              for field in ("sim_index", "particle_id", "log_mass", "r_over_r200")}
    meta = {"split": {k: list(v) for k, v in vars(split).items()}, "log_mass_range": list(lmr),
            "settings": key}
    with atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez appends .npz to any other name
        np.savez(tmp, meta=json.dumps(meta), **arrays)
    return sets, tuple(lmr)


# ----------------------------------------------------------------------- training


def read_training_log(path: Path) -> dict:
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


BEST_WEIGHTS = "best.weights.h5"


def training_callbacks(run_dir: Path, patience: int, initial_epoch: int = 0):
    """Resume (BackupAndRestore), best-weights checkpoint, early stopping, CSV and TensorBoard logs.

    ``initial_epoch`` is the number of epochs already completed; the
    checkpoint's threshold and early stopping's best value and patience
    counter are restored from the CSV log of those epochs.
    """
    import importlib.util

    import keras

    past = read_training_log(run_dir / "training_log.csv")
    prior = [(e, v) for e, v in zip(past.get("epoch", []), past.get("val_loss", [])) if e < initial_epoch]
    prior_best = prior_wait = None
    if prior and (run_dir / BEST_WEIGHTS).is_file():
        best_epoch, prior_best = min(prior, key=lambda ev: ev[1])
        prior_wait = initial_epoch - 1 - best_epoch
    else:
        (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)  # from an older, unrelated fit
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
        print("[deep_halos] tensorboard is not installed: TensorBoard logs skipped (CSV log kept)", flush=True)
    return callbacks


def fit_resumable(model, train_ds, val_ds, run_dir: Path, epochs: int, patience: int,
                  extra_callbacks=(), verbose=2) -> dict:
    """``model.fit`` that resumes from ``run_dir/backup`` after an interruption.

    Before ``fit`` the training dataset's epoch counter is set to the number
    of completed epochs, so a resumed run shuffles as an uninterrupted one.
    After it the weights of the best validation loss over *all* epochs
    (``best.weights.h5``) are loaded.

    Returns:
        The history of every epoch, this call's and earlier ones' (from the CSV log).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    done = _completed_epochs(run_dir)
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(done)
    callbacks = training_callbacks(run_dir, patience, initial_epoch=done) + list(extra_callbacks)
    model.fit(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=callbacks, verbose=verbose)
    hist = read_training_log(run_dir / "training_log.csv")
    if (run_dir / BEST_WEIGHTS).is_file():
        model.load_weights(run_dir / BEST_WEIGHTS)
    return hist


def build_model(config: str, cfg: dict, input_shape):
    from tfhalo.models import halo_cnn

    return halo_cnn(
        input_shape=tuple(input_shape), conv_filters=tuple(cfg["conv_filters"]),
        pool_after=tuple(cfg["pool_after"]), dense_units=tuple(cfg["dense_units"]),
        alpha=ALPHA[config], conv_type="multipole" if config == "multipole" else "conv", ells=(0,),
        # multipole: the l=0 network made exactly invariant under the cube's 48 rotations/reflections
        rotation_invariant=config == "multipole",
        learning_rate=cfg["learning_rate"], seed=cfg["seed"], name=f"halo_cnn_{config}",
    )


def make_inputs(config, sims, cfg):
    from tfhalo.data import BoxInputs

    kind = {"raw": "raw", "averaged": "averaged", "z0": "z0", "multipole": "raw"}[config]
    return BoxInputs(sims, kind=kind, size=cfg["subbox_size"], z0_width=cfg["z0_width"],
                     z0_transform=cfg["z0_transform"])


def train_config(config, sims, sets, label_scaler, cfg, out: Path):
    """Train (or resume, or skip if done) one configuration; returns its history dict."""
    from tfhalo.data import HaloDataset, load_trained, predict_log_mass, save_trained

    run_dir = out / "models" / config
    pred_path = out / "predictions" / f"{config}.npz"
    history_path = run_dir / "history.json"
    key = model_key(cfg, config)
    for marker in ("SETTINGS.json", "DONE"):  # check_caches ran first; this guards direct callers
        if (run_dir / marker).is_file():
            check_cache_key(f"model {config!r}", _stored_settings(run_dir / marker), key, run_dir)
    if (run_dir / "DONE").is_file() and pred_path.is_file():
        print(f"[deep_halos] {config}: already trained (delete {run_dir / 'DONE'} to retrain)", flush=True)
        return json.loads(history_path.read_text()) if history_path.is_file() else {}
    t0 = time.time()
    inputs = make_inputs(config, sims, cfg)
    inputs.fit_standardizer(sets["train"], max_particles=cfg["standardizer_particles"], seed=cfg["seed"])
    common = dict(workers=cfg["workers"], use_multiprocessing=cfg["use_multiprocessing"])
    train_ds = HaloDataset(inputs, sets["train"], label_scaler, batch_size=cfg["batch_size"], shuffle=True,
                           seed=cfg["seed"], **common)
    val_ds = HaloDataset(inputs, sets["validation"], label_scaler, batch_size=cfg["predict_batch_size"], **common)
    if not (run_dir / "DONE").is_file():
        from tfhalo.atomic import write_json_atomic

        write_json_atomic(run_dir / "SETTINGS.json", {"settings": key})
        model = build_model(config, cfg, inputs.input_shape)
        print(f"[deep_halos] {config}: training {model.count_params():,} parameters on "
              f"{len(sets['train'])} particles, {inputs.input_shape[:3]} boxes", flush=True)
        hist = fit_resumable(model, train_ds, val_ds, run_dir, cfg["epochs"], cfg["patience"])
        save_trained(model, run_dir, inputs.standardizer, label_scaler, inputs.config(),
                     export=not cfg.get("no_export", False), config=config, alpha=ALPHA[config])
        from tfhalo.evaluation.report import write_results_json

        write_results_json(history_path, hist)
        write_json_atomic(run_dir / "DONE", {"settings": key, "seconds": round(time.time() - t0)})
    else:
        model = load_trained(run_dir).model
        hist = json.loads(history_path.read_text()) if history_path.is_file() else {}
    pred = predict_log_mass(model, inputs, sets["test"], label_scaler, batch_size=cfg["predict_batch_size"],
                            verbose=0)
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(pred_path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, predicted_log_mass=pred)
    print(f"[deep_halos] {config}: done in {time.time() - t0:.0f} s", flush=True)
    return hist


# --------------------------------------------------------------------- evaluation


def evaluate(sims, sets, lmr, histories, cfg, out: Path):
    from tfhalo.evaluation import (GBTBaseline, default_sphere_radii, evaluate_predictions, pearson_r,
                                   random_predictions, residual_histograms, residuals, training_curves,
                                   violin_plot, write_report)

    test = sets["test"]
    preds = {}
    for config in cfg["configs"]:
        path = out / "predictions" / f"{config}.npz"
        if path.is_file():
            preds[config] = np.load(path)["predicted_log_mass"]
    if not cfg.get("no_gbt"):
        t0 = time.time()
        radii = default_sphere_radii(sims[test.sim_index[0]])
        gbt = GBTBaseline(radii, seed=cfg["seed"]).fit(sims, sets["train"])
        preds["gbt"] = gbt.predict(sims, test)
        print(f"[deep_halos] GBT baseline on {radii.size} sphere radii: {time.time() - t0:.0f} s", flush=True)
    train_lm = sets["train"].log_mass
    preds["random"] = random_predictions(len(test), (train_lm.min(), train_lm.max()), seed=cfg["seed"] + 1)

    pairs = [("raw", "averaged"), ("raw", "gbt"), ("raw", "random"), ("raw", "multipole"),
             ("averaged", "gbt"), ("raw", "z0")]
    ev = evaluate_predictions(test.log_mass, test.r_over_r200, preds, pairs, lmr, n_mass_bins=3)

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
            fig_dir / "residuals_raw_vs_averaged.png", mass_edges=np.linspace(*lmr, 4))
    if histories:
        figs["Training curves and Cauchy scale gamma"] = training_curves(histories, fig_dir / "training.png")

    notes = [
        f"Preset `{cfg['preset']}`: boxes of {cfg['subbox_size']}^3 voxels, network conv filters "
        f"{list(cfg['conv_filters'])}, dense {list(cfg['dense_units'])}, learning rate {cfg['learning_rate']}, "
        f"batch {cfg['batch_size']}, at most {cfg['epochs']} epochs (early stopping patience {cfg['patience']}).",
        "The quick preset is a scaled-down study (small simulations, boxes and networks, few epochs); "
        "its numbers show the pipeline and the sanity ordering, not the paper's precision.",
        "Everything is seeded from --seed: simulations, splits, particle sets, shuffling, the networks' "
        "initial weights (halo_cnn(seed=...)), the GBT and the random model; no global RNG is reseeded. "
        "Float reductions on multi-threaded CPUs can still differ in the last bits between runs.",
    ]
    results = {
        "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                   "suite": str(cfg.get("suite")), "log_mass_range_used": list(lmr),
                   "n_train": len(sets["train"]), "n_validation": len(sets["validation"]),
                   "n_test": len(test), "split": {k: list(v) for k, v in vars(sets["split"]).items()},
                   "alpha": {c: ALPHA[c] for c in cfg["configs"]}},
        "training": histories,
        "evaluation": ev,
    }
    report = write_report(out, results, figs, notes=notes)
    return report, ev


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve_config(args)
    out = args.out or Path("runs") / f"deep_halos_{cfg['preset']}"
    out.mkdir(parents=True, exist_ok=True)
    suite = args.suite or out / "suite"
    cfg["suite"], cfg["no_gbt"], cfg["no_export"] = str(Path(suite).resolve()), args.no_gbt, args.no_export
    check_caches(cfg, out)  # before the suite: a stale --out fails in seconds
    t0 = time.time()
    sims = load_or_generate_suite(suite, cfg)
    print(f"[deep_halos] {len(sims)} simulations ready ({time.time() - t0:.0f} s)", flush=True)
    sets, lmr = particle_sets(sims, cfg, out)
    print(f"[deep_halos] log10 M range {lmr[0]:.2f}-{lmr[1]:.2f}; particles train/val/test "
          f"{len(sets['train'])}/{len(sets['validation'])}/{len(sets['test'])} from simulations "
          f"{list(sets['split'].train)}/{list(sets['split'].validation)}/{list(sets['split'].test)}", flush=True)
    from tfhalo.data import LabelScaler

    label_scaler = LabelScaler().fit(sets["train"].log_mass)
    histories = {}
    for config in cfg["configs"]:
        histories[config] = train_config(config, sims, sets, label_scaler, cfg, out)
    report, ev = evaluate(sims, sets, lmr, histories, cfg, out)
    print("[deep_halos] test-set Pearson r: " + ", ".join(
        f"{k} {v['all']['pearson_r']:.3f}" for k, v in ev["models"].items()), flush=True)
    print(f"[deep_halos] finished in {time.time() - t0:.0f} s. Report: {report.resolve()}", flush=True)
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
