import numpy as np
import pytest

from tfhalo.data.scalers import InputStandardizer, LabelScaler, load_scalers, save_scalers


def test_label_scaler_round_trip_and_range(tmp_path):
    rng = np.random.default_rng(0)
    log_m = rng.uniform(11, 13.4, 500)
    scaler = LabelScaler().fit(log_m)
    y = scaler.transform(log_m)
    assert y.min() == pytest.approx(-1.0) and y.max() == pytest.approx(1.0)
    np.testing.assert_allclose(scaler.inverse_transform(y), log_m, rtol=0, atol=1e-12)


def test_standardizer_streaming_equals_numpy():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=(7, 5, 5, 5)) for _ in range(4)]
    std = InputStandardizer()
    for b in batches:
        std.partial_fit(b)
    allx = np.concatenate(batches)
    assert std.mean == pytest.approx(allx.mean(), rel=1e-12)
    assert std.std == pytest.approx(allx.std(), rel=1e-10)
    z = std.transform(allx)
    assert z.mean() == pytest.approx(0.0, abs=1e-10) and z.std() == pytest.approx(1.0, rel=1e-10)
    np.testing.assert_allclose(std.inverse_transform(z), allx, atol=1e-12)


def test_json_round_trip(tmp_path):
    std = InputStandardizer(mean=0.5, std=2.0)
    lab = LabelScaler(11.0, 13.5)
    path = save_scalers(tmp_path / "scalers.json", std, lab, input={"input_kind": "raw"})
    std2, lab2, extra = load_scalers(path)
    assert (std2.mean, std2.std) == (0.5, 2.0)
    assert (lab2.minimum, lab2.maximum) == (11.0, 13.5)
    assert extra["input"] == {"input_kind": "raw"}
    assert [p.name for p in tmp_path.iterdir()] == ["scalers.json"]  # no temp files left


def test_errors():
    with pytest.raises(FileNotFoundError, match="scalers.json"):
        load_scalers("/nonexistent/dir/scalers.json")
    with pytest.raises(ValueError, match="maximum must exceed minimum"):
        LabelScaler(13.0, 11.0)
    with pytest.raises(ValueError, match="must span a range"):
        LabelScaler().fit(np.full(4, 12.0))
    with pytest.raises(RuntimeError, match="not fitted"):
        LabelScaler().transform([12.0])


@pytest.mark.parametrize("make,match", [
    (lambda: InputStandardizer(mean=np.nan, std=1.0), r"mean must be a finite number. Received: mean=nan"),
    (lambda: InputStandardizer(mean=0.0, std=np.inf), r"std must be a finite number. Received: std=inf"),
    (lambda: InputStandardizer(mean=0.0, std=np.nan), r"std must be a finite number"),
    (lambda: InputStandardizer(mean=0.0, std=-1.0), r"std must be positive. Received: std=-1.0"),
    (lambda: LabelScaler(minimum=np.nan, maximum=13.0), r"minimum must be a finite number"),
    (lambda: LabelScaler(minimum=11.0, maximum=np.inf), r"maximum must be a finite number"),
])
def test_scalers_require_finite_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("content, match", [
    ("{not json", r"not valid JSON"),
    ("[1, 2]", r"must hold a JSON object"),
    ('{"input_standardizer": {"mean": "a", "std": 1.0}, "label_scaler": {"minimum": 11, "maximum": 13}}',
     r"mean must be a number. Received: mean='a'"),
    ('{"input_standardizer": {"mean": 0.0, "std": 1.0, "extra": 1}, "label_scaler": {"minimum": 11, "maximum": 13}}',
     r"input_standardizer"),
])
def test_bad_scaler_file_names_the_file(tmp_path, content, match):
    path = tmp_path / "scalers.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_scalers(path)
    assert str(path) in str(info.value)
