"""tfhalo.studies.common: fingerprints, caches, the suite rule, the command-line shell."""

import argparse
import json
import os

import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.studies import common
from tfhalo.studies.common import Cache, StaleCacheError, StudyInputError, ensure_suite, fingerprint, run_cli


def test_fingerprint_is_canonical_and_sensitive():
    a = np.arange(6, dtype=np.float64)
    assert fingerprint({"x": 1, "y": (1, 2)}, a) == fingerprint({"y": [1, 2], "x": 1}, a.copy())
    different = [fingerprint({"x": 1, "y": (1, 2)}, a.reshape(2, 3)),  # shape
                 fingerprint({"x": 1, "y": (1, 2)}, a.astype(np.float32)),  # dtype
                 fingerprint({"x": 1.0, "y": (1, 2)}, a),  # 1 vs 1.0, as after a JSON round trip
                 fingerprint({"x": 1, "y": (1, 2)}, a + 1e-12),  # one bit of data
                 fingerprint({"x": 1, "y": (1, 2)}), fingerprint(a, {"x": 1, "y": (1, 2)})]  # order of objects
    assert len({fingerprint({"x": 1, "y": (1, 2)}, a), *different}) == 1 + len(different)
    with pytest.raises(TypeError, match="cannot hash objects of type object"):
        fingerprint(object())


def test_cache_round_trip_and_stale_key_names_file_and_keys(tmp_path):
    key = {"n_train": 40, "seed": 0, "range": (10.0, 14.0)}
    cache = Cache(tmp_path, key)
    assert cache.load("sets.npz") is None and cache.load("step.json") is None
    x = np.random.default_rng(0).normal(size=(3, 4))
    cache.save("sets.npz", x=x, ids=np.arange(3))
    cache.save("step.json", {"loss": [1.5, 1.25]})
    again = Cache(tmp_path, dict(key, range=[10.0, 14.0]))  # tuples and lists are the same key
    np.testing.assert_array_equal(again.load("sets.npz")["x"], x)
    assert sorted(again.load("sets.npz")) == ["ids", "x"]
    assert again.load("step.json") == {"loss": [1.5, 1.25]}

    stale = Cache(tmp_path, dict(key, n_train=30, extra=True))
    with pytest.raises(StaleCacheError) as err:
        stale.load("sets.npz")
    assert err.value.path == tmp_path / "sets.npz"
    assert err.value.differences == {"extra": (None, True), "n_train": (40, 30)}
    assert str(tmp_path / "sets.npz") in str(err.value)
    assert "extra: cached None, now True; n_train: cached 40, now 30" in str(err.value)
    with pytest.raises(StaleCacheError, match="step.json"):
        stale.check("step.json")
    assert isinstance(err.value, ValueError)

    (tmp_path / "foreign.npz").write_bytes(b"not a cache")
    with pytest.raises(StaleCacheError, match="settings not recorded"):
        cache.load("foreign.npz")
    Cache(tmp_path, {"other": 1}, overwrite=True).check("sets.npz", "step.json")  # discards stale files
    assert not (tmp_path / "sets.npz").exists() and not (tmp_path / "step.json").exists()
    with pytest.raises(ValueError, match="plain file name"):
        cache.path("../escape.npz")


TINY_PRESET = dict(n_side=8, box_size=20.0, n_steps=2)


def test_ensure_suite_generates_extends_and_uses_other_suites_as_they_are(tmp_path):
    from tfhalo.sim import hdf5
    from tfhalo.sim.suite import read_manifest, resolve_preset, simulation_seeds

    preset = resolve_preset("quick", **TINY_PRESET)
    suite = tmp_path / "suite"
    first = ensure_suite(suite, preset, n_sims=1, seed=4, progress=False)
    assert [p.name for p in first] == ["sim_000.h5"]
    before = first[0].read_bytes()

    paths = ensure_suite(suite, preset, n_sims=2, seed=4, progress=False)  # extended in place
    assert [p.name for p in paths] == ["sim_000.h5", "sim_001.h5"]
    assert paths[0].read_bytes() == before  # simulation 0 reused unchanged
    assert read_manifest(suite)["n_sims"] == 2
    assert [hdf5.read_metadata(p)["seed"] for p in paths] == simulation_seeds(4, 2)
    assert ensure_suite(suite, preset, n_sims=1, seed=4, progress=False) == paths[:1]  # the first n_sims

    # Another seed: the suite is someone else's, used as it is when big enough, never regenerated.
    manifest = (suite / "suite.json").read_text()
    assert ensure_suite(suite, preset, n_sims=2, seed=5, progress=False) == paths
    with pytest.raises(StudyInputError, match=r"holds 2 finished simulations; the study needs n_sims=3"):
        ensure_suite(suite, "quick", n_sims=3, seed=4, progress=False)  # other preset parameters
    assert (suite / "suite.json").read_text() == manifest
    assert sorted(os.listdir(suite)) == ["sim_000", "sim_000.h5", "sim_001", "sim_001.h5", "suite.json"]


def test_ensure_suite_uses_a_user_suite_and_refuses_one_too_small(tmp_path, capsys):
    from tfhalo.sim import write_simulation

    user = tmp_path / "mine"
    user.mkdir()
    for i, sim in enumerate(make_tiny_suite(2, seed=70, n_side=6)):
        write_simulation(sim, user / f"box_{i}.h5")
    listing = sorted(os.listdir(user))
    assert ensure_suite(user, "quick", n_sims=2, seed=0) == [user / "box_0.h5", user / "box_1.h5"]
    assert "using the 2 simulations of the simulation files of" in capsys.readouterr().out
    with pytest.raises(StudyInputError, match=r"simulation files of .*mine holds 2 finished simulations; the "
                                              r"study needs n_sims=3"):
        ensure_suite(user, "quick", n_sims=3, seed=0)
    assert sorted(os.listdir(user)) == listing  # nothing generated or written


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_sims=0), r"n_sims must be at least 1. Received: n_sims=0"),
    (dict(seed=-1), r"seed must be at least 0. Received: seed=-1"),
    (dict(sim_preset="huge"), r"Received: preset='huge'"),
    (dict(sim_preset=3), r"sim_preset must be a preset name or a SimulationPreset. Received: sim_preset=3"),
])
def test_ensure_suite_bad_arguments_write_nothing(tmp_path, kwargs, match):
    args = {**dict(sim_preset="quick", n_sims=2, seed=0, progress=False), **kwargs}
    with pytest.raises(ValueError, match=match):
        ensure_suite(tmp_path / "suite", **args)
    assert not (tmp_path / "suite").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyInputError, match="suite must be a directory"):
        ensure_suite(tmp_path / "file", "quick", 2, 0, progress=False)


def _cli(tmp_path):
    parser = argparse.ArgumentParser(prog="study")
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--fail", choices=("interrupt", "input"), default=None)
    out = tmp_path / "result.json"

    def make_config(args):
        if args.n < 0:
            raise ValueError(f"n must be at least 0. Received: n={args.n}")
        return {"n": args.n}

    def run(config, args):
        if args.fail == "interrupt":
            raise KeyboardInterrupt
        if args.fail == "input":
            raise StaleCacheError(tmp_path / "sets.npz", {"n": (1, 2)})
        out.write_text(json.dumps(config))

    return (parser, make_config, run), out


def test_run_cli_exit_codes(tmp_path, capsys):
    cli, out = _cli(tmp_path)
    assert run_cli(*cli, argv=["--n", "-3"]) == 2
    err = capsys.readouterr().err
    assert "study: error: n must be at least 0. Received: n=-3" in err and "Traceback" not in err
    assert run_cli(*cli, argv=["--n", "x"]) == 2
    assert "invalid int value: 'x'" in capsys.readouterr().err
    assert not out.exists()  # nothing written for bad arguments

    assert run_cli(*cli, argv=["--fail", "interrupt"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err

    assert run_cli(*cli, argv=["--fail", "input"]) == 2
    assert "study: error: " in capsys.readouterr().err

    assert run_cli(*cli, argv=["--help"]) == 0
    capsys.readouterr()
    assert run_cli(*cli, argv=["--n", "4"]) == 0
    assert json.loads(out.read_text()) == {"n": 4}


def test_summary_row_and_machine_info():
    row = common.summary_row("r", np.float32(0.5), (0.4, 0.6), "68% bootstrap", None, "note")
    assert row == {"quantity": "r", "value": 0.5, "error": [0.4, 0.6], "error_kind": "68% bootstrap", "paper": None,
                   "note": "note"}
    assert json.loads(json.dumps(row)) == row
    assert common.summary_row("kl", float("nan"))["value"] is None
    with pytest.raises(ValueError, match="error_kind must say how the error"):
        common.summary_row("r", 0.5, 0.1)
    info = common.machine_info()
    assert f"({os.cpu_count()} cores)" in info and "OPENBLAS_CORETYPE=" in info
    assert common.machine_details()["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")


def test_map_in_processes_returns_in_call_order_from_fresh_processes_with_shared_cores():
    from tests.helpers.processes import environment

    names = ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")
    before = {k: os.environ.get(k) for k in names}
    values = common.map_in_processes(environment, [names, names[:1]], workers=2)
    assert [sorted(env) for _, env in values] == [sorted(names), sorted(names[:1])]
    pids = {pid for pid, _ in values}
    assert os.getpid() not in pids
    threads = max(1, common.available_cores() // 2)
    assert all(env["TF_NUM_INTRAOP_THREADS"] == str(threads) for _, env in values)
    assert values[0][1]["OMP_NUM_THREADS"] == str(threads)
    assert ("--xla_cpu_multi_thread_eigen=false" in (values[0][1]["XLA_FLAGS"] or "")) == (threads == 1)
    assert {k: os.environ.get(k) for k in names} == before  # this process's environment is restored


def test_map_in_processes_raises_the_first_failure_without_waiting_for_the_others():
    import time

    from tests.helpers.processes import fail_after

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="second"):
        common.map_in_processes(fail_after, [(60, "first"), (0, "second")], workers=2)
    assert time.perf_counter() - t0 < 50  # the 60 s call was terminated, not awaited
    assert common.map_in_processes(fail_after, [(None, "a"), (None, "b"), (None, "c")], workers=2) == ["a", "b", "c"]
    assert common.map_in_processes(fail_after, [], workers=2) == []


@pytest.mark.parametrize("kwargs, match", [(dict(workers=0), "workers=0"), (dict(calls=[[1]]), "calls=")])
def test_map_in_processes_refuses_bad_arguments(kwargs, match):
    from tests.helpers.processes import fail_after

    args = {**dict(fn=fail_after, calls=[(None, "a")], workers=1), **kwargs}
    with pytest.raises(ValueError, match=match):
        common.map_in_processes(**args)
