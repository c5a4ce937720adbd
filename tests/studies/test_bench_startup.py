"""benchmarks/bench_startup.py: its argument checks, and the shared-trace mode in-process on a tiny grid."""

import argparse

import pytest

from tests.helpers.scripts import load_script


@pytest.fixture()
def bench(monkeypatch):
    return load_script("benchmarks/bench_startup.py", monkeypatch)


@pytest.mark.parametrize("argv, message", [
    (["--n-grid", "2"], "--n-grid must be at least 4. Received: 2"),
    (["--n-grid", "9"], "--n-grid must be even (2LPT's particle grid). Received: 9"),
    (["--samples", "3"], "--samples must be at least 4. Received: 3"),
    (["--warmup", "10"], "--warmup must be at least 20. Received: 10"),
    (["--repeats", "1"], "--repeats must be at least 2. Received: 1"),
])
def test_bad_arguments_are_usage_errors(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_log_density_is_traced_once_and_the_second_call_traces_nothing(bench):
    from tfhalo import backend

    row = bench.run_mode("shared", argparse.Namespace(n_grid=4, warmup=20, samples=4))
    assert row["mode"] == "shared" and row["second_call_s"] > 0
    assert row["overhead_s"] == pytest.approx(row["first_call_s"] - row["second_call_s"])
    if backend.NAME == "tensorflow":
        # Each call checks the start eagerly (the value, then the value and gradient: two runs of the Python
        # code); the first call then traces the log-density once for its three compiled functions, the second none.
        assert (row["first_call_python_calls"], row["second_call_python_calls"]) == (3, 2)
    else:  # JAX: the checks are compiled programs too, kept with the sampler's
        assert row["first_call_python_calls"] > 0 and row["second_call_python_calls"] == 0


def test_the_summary_is_each_modes_mean_and_standard_error_and_the_ratio_to_the_baseline(bench):
    import numpy as np

    rng = np.random.default_rng(0)
    runs = []
    for _ in range(4):
        for mode, scale in (("per_call_site", 20.0), ("shared", 15.0)):
            first, second = scale + rng.normal(), 0.5 + 0.01 * rng.normal()
            runs.append(dict(mode=mode, backend="tensorflow", first_call_s=first, second_call_s=second,
                             overhead_s=first - second, first_call_python_calls=3, second_call_python_calls=2))
    base, shared = bench.summarise(runs)
    assert (base["mode"], shared["mode"], shared["repeats"]) == ("per_call_site", "shared", 4)
    a = np.array([r["first_call_s"] for r in runs if r["mode"] == "shared"])
    b = np.array([r["first_call_s"] for r in runs if r["mode"] == "per_call_site"])
    assert shared["first_call_s"] == pytest.approx(a.mean())
    assert shared["first_call_s_stderr"] == pytest.approx(a.std(ddof=1) / 2.0)
    ratio = a.mean() / b.mean()
    assert shared["first_call_ratio"] == pytest.approx(ratio)
    want = ratio * np.hypot(a.std(ddof=1) / 2.0 / a.mean(), b.std(ddof=1) / 2.0 / b.mean())
    assert shared["first_call_ratio_stderr"] == pytest.approx(want)
    assert base["first_call_ratio"] == 1.0 and base["first_call_ratio_stderr"] == 0.0
