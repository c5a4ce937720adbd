"""Input standardisation and label scaling, fitted on training data only.

Both are saved as JSON next to a trained model so that predictions for a new
simulation use exactly the training transformation and come back in log10 M.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfhalo.atomic import write_json_atomic
from tfhalo.validation import check_float

SCALERS_FILENAME = "scalers.json"


class InputStandardizer:
    """``x -> (x - mean) / std`` with the training inputs' mean and std.

    Fit in a streaming way (float64 running sums) so that a training set of
    many boxes never has to be in memory at once.

    Example:
        >>> s = InputStandardizer().partial_fit(np.array([1.0, 3.0]))
        >>> s.mean, s.std
        (2.0, 1.0)
    """

    def __init__(self, mean: float | None = None, std: float | None = None):
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither. Received: mean={mean}, std={std}")
        # NaN passes a "> 0" test on neither side, so check finiteness explicitly.
        self.mean = None if mean is None else check_float("mean", mean)
        self.std = None if std is None else check_float("std", std, positive=True)
        self._n = 0
        self._sum = 0.0
        self._sum_sq = 0.0

    def partial_fit(self, x) -> "InputStandardizer":
        """Accumulate one batch of inputs (any shape) and update mean and std."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("inputs to fit the standardiser must be finite. Received non-finite values.")
        self._n += x.size
        self._sum += float(x.sum())
        self._sum_sq += float(np.square(x).sum())
        if self._n:
            mean = self._sum / self._n
            var = max(self._sum_sq / self._n - mean**2, 0.0)
            self.mean, self.std = mean, float(np.sqrt(var)) if var > 0 else 1.0
        return self

    def _check_fitted(self):
        if self.mean is None:
            raise RuntimeError("InputStandardizer is not fitted: call partial_fit first.")

    def transform(self, x) -> np.ndarray:
        self._check_fitted()
        x = np.asarray(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return ((x - self.mean) / self.std).astype(dtype, copy=False)

    def inverse_transform(self, z) -> np.ndarray:
        self._check_fitted()
        return np.asarray(z) * self.std + self.mean

    def get_config(self) -> dict:
        self._check_fitted()
        return {"mean": self.mean, "std": self.std}


class LabelScaler:
    """Min-max scaling of log10 M to ``[-1, 1]``, fitted on training labels.

    Example:
        >>> s = LabelScaler().fit(np.array([11.0, 13.0]))
        >>> s.transform(np.array([11.0, 12.0, 13.0]))
        array([-1.,  0.,  1.])
    """

    def __init__(self, minimum: float | None = None, maximum: float | None = None):
        if (minimum is None) != (maximum is None):
            raise ValueError(
                f"give both minimum and maximum or neither. Received: minimum={minimum}, maximum={maximum}"
            )
        if minimum is not None:
            minimum, maximum = check_float("minimum", minimum), check_float("maximum", maximum)
        if minimum is not None and not float(maximum) > float(minimum):
            raise ValueError(
                f"maximum must exceed minimum. Received: minimum={minimum}, maximum={maximum}"
            )
        self.minimum = None if minimum is None else float(minimum)
        self.maximum = None if maximum is None else float(maximum)

    def fit(self, log_mass) -> "LabelScaler":
        log_mass = np.asarray(log_mass, dtype=np.float64)
        if log_mass.size == 0 or not np.all(np.isfinite(log_mass)):
            raise ValueError(
                f"labels to fit the scaler must be a non-empty finite array. Received: {log_mass.size} values"
            )
        lo, hi = float(log_mass.min()), float(log_mass.max())
        if not hi > lo:
            raise ValueError(f"labels must span a range to be min-max scaled. Received: all equal to {lo}")
        self.minimum, self.maximum = lo, hi
        return self

    def _check_fitted(self):
        if self.minimum is None:
            raise RuntimeError("LabelScaler is not fitted: call fit first.")

    def transform(self, log_mass) -> np.ndarray:
        self._check_fitted()
        x = np.asarray(log_mass, dtype=np.float64)
        return 2.0 * (x - self.minimum) / (self.maximum - self.minimum) - 1.0

    def inverse_transform(self, y) -> np.ndarray:
        """Scaled values back to log10 M (Msun/h)."""
        self._check_fitted()
        y = np.asarray(y, dtype=np.float64)
        return (y + 1.0) * 0.5 * (self.maximum - self.minimum) + self.minimum

    def get_config(self) -> dict:
        self._check_fitted()
        return {"minimum": self.minimum, "maximum": self.maximum}


def save_scalers(path, standardizer: InputStandardizer, label_scaler: LabelScaler,
                 **extra) -> Path:
    """Write both scalers (and any JSON-able ``extra`` entries) to ``path`` atomically.

    Args:
        path: a JSON file, or a directory (then ``DIR/scalers.json``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / SCALERS_FILENAME
    payload = {"input_standardizer": standardizer.get_config(),
               "label_scaler": label_scaler.get_config(),
               "label": "log10 halo mass [Msun/h], min-max scaled to [-1, 1]", **extra}
    return write_json_atomic(path, payload)


def load_scalers(path) -> tuple[InputStandardizer, LabelScaler, dict]:
    """Read scalers written by :func:`save_scalers`.

    Returns:
        ``(standardizer, label_scaler, extra)`` where ``extra`` holds the other entries.

    Raises:
        FileNotFoundError: no scaler file (e.g. a model directory without ``scalers.json``).
        ValueError: the file is not valid JSON or an entry is missing or invalid (the file is named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / SCALERS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"scaler file not found: {path}. A trained tfhalo model directory must hold "
            f"{SCALERS_FILENAME} (input standardisation and label scaler) next to the model."
        )
    try:
        payload = json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"scaler file {path} is not valid JSON (not UTF-8 text): {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"scaler file {path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"scaler file {path} must hold a JSON object. Received: {type(payload).__name__}")
    parts = []
    for key, cls in (("input_standardizer", InputStandardizer), ("label_scaler", LabelScaler)):
        if key not in payload:
            raise ValueError(f"scaler file {path} lacks the entry {key!r}.")
        config = payload.pop(key)
        try:
            parts.append(cls(**config))
        except (TypeError, ValueError) as err:
            raise ValueError(f"scaler file {path} has an invalid {key!r} entry ({config!r}): {err}") from None
    return parts[0], parts[1], payload
