"""benchmarks/bench_chain_memory.py: its argument checks, and both modes run in-process on a tiny grid."""

import argparse

import pytest

from tests.helpers.scripts import load_script


@pytest.fixture()
def bench(monkeypatch):
    return load_script("benchmarks/bench_chain_memory.py", monkeypatch)


@pytest.mark.parametrize("argv, message", [
    (["--draws", "5"], "--draws must be at least 20. Received: 5"),
    (["--thin", "0"], "--thin must be at least 1. Received: 0"),
    (["--n-grid", "9"], "--n-grid must be even. Received: 9"),
])
def test_bad_arguments_are_usage_errors(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_thinned_mode_keeps_a_thin_th_of_the_field(bench):
    args = argparse.Namespace(n_grid=4, chains=2, warmup=0, draws=50, thin=5, block_size=10)
    full, thinned = bench.run_mode("full", args), bench.run_mode("thinned", args)
    p, draws, chains = 4**3 + bench.N_BIAS, 50, 2
    assert full["chains_bytes"] == draws * chains * p * 8
    # the bias at every draw, the field at every 5th, its mean over the draws, and its power in each bin per draw
    from tfhalo.field.analysis import k_bins

    n_bins = k_bins(4, 16.0).n_bins
    want = draws * chains * bench.N_BIAS + (draws // 5) * chains * 4**3 + chains * 4**3 + draws * chains * n_bins
    assert thinned["chains_bytes"] == 8 * want
    assert thinned["checkpoint_bytes"] < full["checkpoint_bytes"]
