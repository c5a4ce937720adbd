"""Saving trained deep-halo models and predicting halo masses for new simulations.

A model directory holds::

    model.keras       the whole Keras model (custom tfhalo layers registered)
    saved_model/      TensorFlow SavedModel export (serving without tfhalo)
    scalers.json      input standardisation, label scaler and input config
    MANIFEST.json     written last: the directory is complete (checked by load_trained)

The three parts are built together in a temporary sibling directory. A new
``model_dir`` is then created by one rename; into an existing directory (a
training run's, with its logs) the old manifest is removed first, the parts
are renamed in, and the manifest comes last, so an interrupted save never
leaves a directory that :func:`load_trained` accepts with mismatched parts.

:func:`predict_to_file` gives every particle of a generated or pynbody-loaded
simulation its predicted halo mass, in batches with a progress bar, and
writes the result to HDF5 through a temporary file and a rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np

from tfhalo.atomic import atomic_path
from tfhalo.validation import check_index_array, check_int, check_output_path
from tfhalo.data.dataset import BoxInputs
from tfhalo.data.scalers import SCALERS_FILENAME, InputStandardizer, LabelScaler, load_scalers, save_scalers

MODEL_FILENAME = "model.keras"
SAVED_MODEL_DIRNAME = "saved_model"
MANIFEST_FILENAME = "MANIFEST.json"


def save_trained(model, model_dir, standardizer: InputStandardizer, label_scaler: LabelScaler,
                 input_config: dict, export: bool = True, **extra) -> Path:
    """Save ``model`` as ``.keras`` (+ SavedModel export) with its scalers.

    Args:
        model: trained Keras model.
        model_dir: output directory (created).
        standardizer, label_scaler: the fitted training transformations.
        input_config: :meth:`BoxInputs.config` of the training inputs.
        export: also write a TensorFlow SavedModel (TensorFlow backend only).
        **extra: more JSON-able entries for ``scalers.json``.

    Returns:
        ``model_dir``.
    """
    import keras

    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    # Into an existing directory the parts move one by one (manifest last);
    # a new one appears by a single rename of the finished build.
    into_existing = model_dir.is_dir()
    target = model_dir.with_name(model_dir.name + ".incoming") if into_existing else model_dir
    with atomic_path(target, suffix=".partial") as build:
        build.mkdir()
        model.save(build / MODEL_FILENAME)
        parts = [MODEL_FILENAME]
        if export:
            if keras.backend.backend() != "tensorflow":
                warnings.warn("SavedModel export needs the TensorFlow backend; skipped.", stacklevel=2)
            else:
                model.export(str(build / SAVED_MODEL_DIRNAME), verbose=False)
                parts.append(SAVED_MODEL_DIRNAME)
        save_scalers(build / SCALERS_FILENAME, standardizer, label_scaler, input=input_config, **extra)
        parts.append(SCALERS_FILENAME)
        (build / MANIFEST_FILENAME).write_text(json.dumps({"parts": parts}, indent=2))
        if into_existing:
            _move_parts_into(build, model_dir, parts)
    if into_existing:
        shutil.rmtree(target, ignore_errors=True)  # the emptied build directory
    return model_dir


def _move_parts_into(build: Path, model_dir: Path, parts) -> None:
    # Invalidate first: from here until the new manifest lands, load_trained refuses the directory.
    (model_dir / MANIFEST_FILENAME).unlink(missing_ok=True)
    for name in list(parts) + ([SAVED_MODEL_DIRNAME] if SAVED_MODEL_DIRNAME not in parts else []):
        target = model_dir / name
        if name not in parts:  # an old export that no longer matches the model
            if target.is_dir():
                shutil.rmtree(target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(build / name, target)
    os.replace(build / MANIFEST_FILENAME, model_dir / MANIFEST_FILENAME)


@dataclasses.dataclass
class TrainedHaloModel:
    """A trained model with the transformations it was trained with."""

    model: object
    standardizer: InputStandardizer
    label_scaler: LabelScaler
    input_config: dict
    model_dir: Path

    def inputs_for(self, simulations) -> BoxInputs:
        """:class:`BoxInputs` for new simulations, with the training standardisation.

        Raises:
            ValueError: a simulation's lattice is smaller than the model's
                input box, or it holds non-finite values.
        """
        cfg = self.input_config
        size = int(cfg["subbox_size"])
        if cfg["input_kind"] != "z0":
            for sim in simulations:
                if sim.n_side < size:
                    raise ValueError(
                        f"simulation must have at least {size} particles per side: the model in "
                        f"{str(self.model_dir)!r} reads {size}^3 boxes of the initial-density lattice. "
                        f"Received: simulation {sim.name!r} with n_side={sim.n_side}"
                    )
        inputs = BoxInputs(simulations, kind=cfg["input_kind"], size=cfg["subbox_size"],
                           standardizer=self.standardizer, z0_width=cfg.get("z0_width", 1.5),
                           z0_transform=cfg.get("z0_transform", "delta"))
        trained = cfg.get("lattice_spacing")
        if trained and cfg["input_kind"] != "z0":
            for sim in inputs.simulations:
                if abs(sim.lattice_spacing / trained - 1) > 0.01:
                    warnings.warn(
                        f"simulation {sim.name!r} has lattice spacing {sim.lattice_spacing:.4g} Mpc/h but "
                        f"the model was trained at {trained:.4g} Mpc/h: its boxes cover a different "
                        f"physical scale.", stacklevel=2)
        return inputs

    def predict_scaled_batch(self, x) -> np.ndarray:
        y = np.asarray(self.model.predict_on_batch(x))
        return y.reshape(y.shape[0], -1)[:, 0]

    def predict(self, simulation, particle_ids=None, batch_size: int = 256,
                progress: bool = True) -> np.ndarray:
        """Predicted log10 M (Msun/h) of ``particle_ids`` (default: all) of ``simulation``."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        ids = (np.arange(simulation.n_particles) if particle_ids is None
               else check_index_array("particle_ids", particle_ids, simulation.n_particles))
        out = np.empty(ids.size)
        for start, stop, pred in self._iter_predictions(simulation, ids, batch_size, progress):
            out[start:stop] = pred
        return out

    def _iter_predictions(self, simulation, ids, batch_size, progress):
        from tqdm.auto import tqdm

        batch_size = check_int("batch_size", batch_size, minimum=1)
        inputs = self.inputs_for([simulation])
        zeros = np.zeros(0, dtype=np.int64)
        with tqdm(total=ids.size, unit="particle", disable=not progress, desc="predicting") as bar:
            for start in range(0, ids.size, int(batch_size)):
                chunk = ids[start:start + int(batch_size)]
                x = inputs(np.zeros_like(chunk) if chunk.size else zeros, chunk)
                pred = self.label_scaler.inverse_transform(self.predict_scaled_batch(x))
                if not np.all(np.isfinite(pred)):
                    first = int(chunk[np.flatnonzero(~np.isfinite(pred))[0]])
                    raise ValueError(
                        f"the model in {str(self.model_dir)!r} predicted a non-finite halo mass for particle "
                        f"{first} of simulation {simulation.name!r} from finite inputs (an overflow inside "
                        f"the network). Received: model_dir={str(self.model_dir)!r}"
                    )
                bar.update(chunk.size)
                yield start, start + chunk.size, pred


def _import_custom_objects():
    # Registers tfhalo's layers, losses and models with Keras before loading.
    import tfhalo.layers  # noqa: F401
    import tfhalo.losses  # noqa: F401
    import tfhalo.models  # noqa: F401
    import tfhalo.regularizers  # noqa: F401


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"model manifest {path} is not valid JSON (not UTF-8 text): {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"model manifest {path} is not valid JSON: {err}. Save the model again.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts", []), list):
        raise ValueError(f"model manifest {path} must be a JSON object with a 'parts' list. Received: {manifest!r}")
    return manifest


def _load_keras_model(path: Path):
    import keras

    # Keras reports a damaged archive as "File not found"; say what is wrong instead.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} cannot be loaded: it is not a .keras (zip) archive; the file is corrupt or "
                         f"truncated. Save the model again.")
    _import_custom_objects()
    try:
        model = keras.saving.load_model(path, compile=False)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} cannot be loaded: the file is corrupt or not a tfhalo model "
                         f"({type(err).__name__}: {err})") from err
    for weight, value in zip(model.weights, model.get_weights()):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path} holds non-finite weights (in {weight.path!r}): every prediction "
                             f"would be NaN. Retrain, or save the weights of a finite checkpoint.")
    return model


def load_trained(model_dir) -> TrainedHaloModel:
    """Load a model directory written by :func:`save_trained`.

    Raises:
        FileNotFoundError: the directory, its ``model.keras`` or its
            ``scalers.json`` is missing (checked before loading anything).
        ValueError: a corrupt ``model.keras``, ``scalers.json`` or
            ``MANIFEST.json`` (the file is named), or non-finite weights.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model_dir is not a directory. Received: model_dir={str(model_dir)!r}")
    if not (model_dir / SCALERS_FILENAME).is_file():
        raise FileNotFoundError(
            f"model_dir {str(model_dir)!r} has no {SCALERS_FILENAME}: without the training input "
            f"standardisation and label scaler its predictions cannot be turned into halo masses. "
            f"Save models with tfhalo.data.save_trained."
        )
    if not (model_dir / MODEL_FILENAME).is_file():
        raise FileNotFoundError(f"model_dir {str(model_dir)!r} has no {MODEL_FILENAME}.")
    manifest = model_dir / MANIFEST_FILENAME
    missing = ([] if not manifest.is_file() else
               [p for p in _read_manifest(manifest).get("parts", []) if not (model_dir / p).exists()])
    if not manifest.is_file() or missing:
        raise FileNotFoundError(
            f"model_dir {str(model_dir)!r} is incomplete (no {MANIFEST_FILENAME}, or missing {missing}): "
            f"its save was interrupted or it was not written by tfhalo.data.save_trained. Save it again."
        )
    standardizer, label_scaler, extra = load_scalers(model_dir / SCALERS_FILENAME)
    if not isinstance(extra.get("input"), dict) or "input_kind" not in extra["input"] or (
            "subbox_size" not in extra["input"]):
        raise ValueError(f"{model_dir / SCALERS_FILENAME} lacks the 'input' configuration entry "
                         f"(input_kind, subbox_size). Received: input={extra.get('input')!r}")
    model = _load_keras_model(model_dir / MODEL_FILENAME)
    return TrainedHaloModel(model, standardizer, label_scaler, extra["input"], model_dir)


@contextlib.contextmanager
def _created_parents(path: Path):
    """Create ``path``'s missing parent directories; remove them again if the body fails."""
    missing = [p for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for directory in missing:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def predict_to_file(model_dir, simulation, out_path, batch_size: int = 256, particle_ids=None,
                    progress: bool = True, **load_kwargs) -> Path:
    """Every particle's predicted halo mass, written to an HDF5 file.

    Every argument is checked before the model is loaded: ``out_path`` must
    not be an existing directory, nor ``model_dir``, the simulation's files or
    anything inside them (through symlinks too). A failure at any point leaves
    no file and no new directory behind.

    Args:
        model_dir: a directory written by :func:`save_trained`.
        simulation: a :class:`~tfhalo.sim.Simulation`, or a path given to
            :func:`tfhalo.sim.load` (suite ``.h5`` file or a pynbody-readable snapshot).
        out_path: output ``.h5`` file (written to a temporary name, then renamed;
            missing parent directories are created).
        batch_size: particles per model call.
        particle_ids: optional subset of ids (default: every particle).
        progress: show a progress bar.
        **load_kwargs: passed to :func:`tfhalo.sim.load`.

    The file holds ``particle_id`` (P,), ``predicted_log10_mass`` (P,) in
    log10 Msun/h, ``true_log10_mass`` (P,; NaN outside halos) and attributes
    naming the model and simulation.

    Returns:
        ``out_path``.

    Raises:
        ValueError: a bad argument, an ``out_path`` that would overwrite an
            input, a simulation smaller than the model's input box or with
            non-finite values, or a corrupt model directory.
        FileNotFoundError: ``model_dir`` or the simulation does not exist.

    Example:
        >>> predict_to_file("study/models/raw", "suite/sim_021.h5", "pred.h5")  # doctest: +SKIP
    """
    import h5py

    batch_size = check_int("batch_size", batch_size, minimum=1)
    inputs = {"model_dir": model_dir}
    if isinstance(simulation, (str, os.PathLike)):
        from tfhalo.sim.loader import input_paths

        inputs["simulation"] = input_paths(simulation, initial=load_kwargs.get("initial"),
                                           halos=load_kwargs.get("halos"))
    out_path = check_output_path("out_path", out_path, inputs=inputs)
    trained = load_trained(model_dir)  # fails fast on a bad model dir
    if isinstance(simulation, (str, os.PathLike)):
        from tfhalo.sim import load

        simulation = load(simulation, **load_kwargs)
    ids = (np.arange(simulation.n_particles, dtype=np.int64) if particle_ids is None
           else check_index_array("particle_ids", particle_ids, simulation.n_particles))
    trained.inputs_for([simulation])  # the lattice size and finiteness checks, before anything is written
    with _created_parents(out_path), atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("particle_id", data=ids)
        pred = f.create_dataset("predicted_log10_mass", shape=(ids.size,), dtype="f8")
        mass = simulation.halo_mass[ids]
        with np.errstate(divide="ignore"):
            f.create_dataset("true_log10_mass", data=np.where(mass > 0, np.log10(np.maximum(mass, 1e-300)), np.nan))
        for start, stop, values in trained._iter_predictions(simulation, ids, batch_size, progress):
            pred[start:stop] = values
        f.attrs["model_dir"] = str(Path(model_dir).resolve())
        f.attrs["simulation"] = str(simulation.name)
        f.attrs["input_kind"] = trained.input_config["input_kind"]
        f.attrs["units"] = "log10 Msun/h"
    return out_path
