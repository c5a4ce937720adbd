"""The tfhalo command line."""

import os
import sys
import types

import numpy as np
import pytest

from tfhalo.cli import main
from tfhalo.sim import load, load_suite
from tfhalo.sim.suite import simulation_seeds

TINY = ["--n-side", "16", "--box-size", "20", "--n-steps", "4", "--no-progress"]


def test_simulate_writes_a_loadable_resumable_suite(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["simulate", "--preset", "quick", "--n-sims", "2", "--out", str(out), "--seed", "3", *TINY]) == 0
    assert "2 simulations" in capsys.readouterr().out
    sims = load_suite(out)
    assert [s.seed for s in sims] == simulation_seeds(3, 2)
    assert sims[0].n_side == 16 and sims[0].box_size == 20.0
    via_pynbody = load(out / "sim_000")
    np.testing.assert_array_equal(via_pynbody.halo_id, sims[0].halo_id)
    mtime = os.stat(out / "sim_000.h5").st_mtime_ns
    assert main(["simulate", "--n-sims", "2", "--out", str(out), "--seed", "3", *TINY]) == 0
    assert os.stat(out / "sim_000.h5").st_mtime_ns == mtime


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--preset", "huge", "--out", "x"], "invalid choice: 'huge'"),
        (["simulate", "--out", "x", "--box-size", "-1"], "--box-size: expected a positive number, received '-1'"),
        (["simulate", "--out", "x", "--n-side", "0"], "--n-side: expected a positive integer, received '0'"),
        (["simulate", "--out", "x", "--n-sims", "zero"], "--n-sims: expected a positive integer"),
        (["simulate"], "--out"),
        (["predict", "--model", "m", "--simulation", "s"], "--out"),
    ],
)
def test_bad_arguments_exit_with_a_message(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)  # the relative "x" would land here
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--n-side", "1"], "n_side must be an integer >= 2. Received: n_side=1"),
        (["--box-size", "1e-30"], "box_size and n_side give wave numbers"),
    ],
)
def test_invalid_simulation_writes_nothing_and_the_fix_runs(tmp_path, capsys, override, message):
    out = tmp_path / "x"
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--n-sims", "1", "--out", str(out), *TINY, *override])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (out / "suite.json").exists() and not out.exists()
    assert main(["simulate", "--n-sims", "1", "--out", str(out), *TINY]) == 0  # not blocked by leftovers


def test_simulate_reports_suite_conflicts(tmp_path, capsys):
    out = tmp_path / "suite"
    main(["simulate", "--n-sims", "1", "--out", str(out), "--seed", "1", *TINY])
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--n-sims", "1", "--out", str(out), "--seed", "2", *TINY])
    assert info.value.code == 2
    assert "another suite" in capsys.readouterr().err


def test_predict_passes_its_arguments(tmp_path, monkeypatch):
    calls = []

    def predict_to_file(model_dir, simulation_path, out_path, batch_size=64):
        calls.append((model_dir, simulation_path, out_path, batch_size))
        return out_path

    fake = types.ModuleType("tfhalo.data.prediction")
    fake.predict_to_file = predict_to_file
    monkeypatch.setitem(sys.modules, "tfhalo.data.prediction", fake)
    argv = ["predict", "--model", "m_dir", "--simulation", "s.h5", "--out", "p.h5", "--batch-size", "7"]
    assert main(argv) == 0
    assert calls == [("m_dir", "s.h5", "p.h5", 7)]
