"""benchmarks/coverage_expectation.py: its rows recomputed, its JSON, and its argument checks."""

import json

import numpy as np
import pytest

from tests.helpers.scripts import load_script


@pytest.fixture()
def bench(monkeypatch):
    return load_script("benchmarks/coverage_expectation.py", monkeypatch)


def test_ar1_chains_are_stationary_with_the_asked_lag_one_correlation(bench):
    x = bench.ar1_chains(np.random.default_rng(0), 2, 200, 500, 0.6)
    assert x.shape == (2, 200, 500)
    assert abs(x.var() - 1.0) < 0.05
    lag1 = np.mean(x[:, 1:] * x[:, :-1]) / np.mean(x * x)
    assert abs(lag1 - 0.6) < 0.03


def test_a_case_row_is_the_fraction_of_fresh_truths_inside_the_intervals(bench):
    from tfhalo.field.analysis import expected_coverage

    rows = bench.case_rows(2, 30, 0.0, 5, 300)
    rng = np.random.default_rng(5)
    x = bench.ar1_chains(rng, 2, 30, 300, 0.0)
    truth = rng.standard_normal(300)
    for row, level in zip(rows, bench.LEVELS):
        lo, hi = np.quantile(x.reshape(-1, 300), [(1 - level) / 2, (1 + level) / 2], axis=0)
        assert row["fraction"] == pytest.approx(np.mean((truth >= lo) & (truth <= hi)), abs=1e-12)
        assert row["expected"] == pytest.approx(expected_coverage(x, level).mean(), abs=1e-12)
        assert row["z_nominal"] == pytest.approx((row["fraction"] - level) / np.sqrt(level * (1 - level) / 300))


def test_main_writes_every_case_and_level(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CASES", ((2, 20, 0.0), (2, 20, 0.5)))
    out = tmp_path / "c.json"
    assert bench.main(["--seeds", "1", "--modes", "100", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert len(payload["rows"]) == 2 * len(bench.LEVELS) and payload["seeds"] == [1]


@pytest.mark.parametrize("argv, message", [
    (["--modes", "10"], "modes must be at least 100"),
    (["--seeds", "-1"], "seeds must be at least 0"),
])
def test_bad_arguments_exit_2_and_write_nothing(bench, tmp_path, capsys, argv, message):
    out = tmp_path / "c.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv + ["--out", str(out)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
