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
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--n-side", "1"], "Received: n_side=1"),
        (["--box-size", "1e-30"], "box_size and n_side give wave numbers"),
    ],
)
def test_invalid_simulation_writes_nothing_and_the_fix_runs(tmp_path, capsys, override, message):
    out = tmp_path / "x"
    assert main(["simulate", "--n-sims", "1", "--out", str(out), *TINY, *override]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "suite.json").exists() and not out.exists()
    assert main(["simulate", "--n-sims", "1", "--out", str(out), *TINY]) == 0  # not blocked by leftovers


def test_simulate_reports_suite_conflicts(tmp_path, capsys):
    out = tmp_path / "suite"
    main(["simulate", "--n-sims", "1", "--out", str(out), "--seed", "1", *TINY])
    assert main(["simulate", "--n-sims", "1", "--out", str(out), "--seed", "2", *TINY]) == 2
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


def test_empty_out_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # "" would mean the current directory
    for argv in (["simulate", "--out", "", *TINY], ["predict", "--model", "m", "--simulation", "s.h5", "--out", ""]):
        assert main(argv) == 2
        assert "argument --out: expected a non-empty path, received ''" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def predict_inputs(tmp_path):
    from tests.sim.io_fakes import fake_simulation
    from tfhalo.sim import hdf5

    sim_path = hdf5.write_simulation(fake_simulation(n_side=4, n_halos=1), tmp_path / "v.h5")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.keras").write_bytes(b"stand-in")
    return sim_path, model


@pytest.mark.parametrize("out", ["sim", "sim_link", "model", "model_file", "model_link", "existing_dir"])
def test_predict_refuses_an_out_that_is_an_input_or_a_directory(predict_inputs, tmp_path, monkeypatch, capsys, out):
    sim_path, model = predict_inputs
    (tmp_path / "sim_link").symlink_to(sim_path)
    (tmp_path / "model_link").symlink_to(model)
    (tmp_path / "existing_dir").mkdir()
    target = {"sim": sim_path, "sim_link": tmp_path / "sim_link", "model": model,
              "model_file": model / "." / "model.keras", "model_link": tmp_path / "model_link" / "model.keras",
              "existing_dir": tmp_path / "existing_dir"}[out]
    started = []
    fake = types.ModuleType("tfhalo.data.prediction")
    fake.predict_to_file = lambda *args, **kwargs: started.append(args)
    monkeypatch.setitem(sys.modules, "tfhalo.data.prediction", fake)
    before = sim_path.read_bytes()
    argv = ["predict", "--model", str(model), "--simulation", str(sim_path), "--out", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out" in err and f"Received: --out={str(target)!r}" in err
    assert started == []  # refused before any work
    assert sim_path.read_bytes() == before and (model / "model.keras").read_bytes() == b"stand-in"


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    import tfhalo.sim.suite as suite

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "generate_suite", interrupted)
    assert main(["simulate", "--n-sims", "1", "--out", str(tmp_path / "x"), *TINY]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err


def test_simulate_shards_build_the_unsharded_suite(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["simulate", "--n-sims", "3", "--out", str(whole), "--seed", "4", *TINY]) == 0
    for shard, count in (("1/2", 1), ("0/2", 2)):
        assert main(["simulate", "--n-sims", "3", "--out", str(parts), "--seed", "4", "--shard", shard, *TINY]) == 0
        assert f"{count} simulations (shard {shard} of 3) in {parts}" in capsys.readouterr().out
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(parts) for p in parts.rglob("*") if p.is_file()) and len(files) == 16
    assert all((whole / f).read_bytes() == (parts / f).read_bytes() for f in files)


@pytest.mark.parametrize("shard", ["3/2", "1/0", "a", "-1/2"])
def test_bad_shard_exits_before_any_work(tmp_path, capsys, shard):
    out = tmp_path / "x"
    assert main(["simulate", "--n-sims", "2", "--out", str(out), f"--shard={shard}", *TINY]) == 2
    assert f"--shard must be 'i/N' with 0 <= i < N. Received: --shard={shard!r}" in capsys.readouterr().err
    assert not out.exists()
