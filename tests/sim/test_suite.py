"""Suite generation: presets, seeds, resumability, atomic outputs, end to end through pynbody."""

import dataclasses
import json
import os

import numpy as np
import pytest

from tests.sim.test_hdf5 import assert_same_simulation
from tfhalo.sim import PRESETS, generate_suite, list_suite, load, load_suite, run_simulation
from tfhalo.sim.suite import SimulationPreset, resolve_preset, simulation_seeds

TINY = dict(n_side=16, box_size=20.0, n_steps=4)


def test_presets():
    quick, paper = PRESETS["quick"], PRESETS["paper"]
    assert (paper.n_side, paper.box_size, paper.z_initial, paper.n_steps) == (256, 50.0, 99.0, 10)
    assert quick.n_side**3 < paper.n_side**3 / 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.n_side = 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(preset="huge"), "preset='huge'"),
        (dict(box_size=-1.0), "box_size must be positive. Received: box_size=-1.0"),
        (dict(box_size=0.0), "box_size must be positive"),
        (dict(n_side=0), "n_side must be at least 2. Received: n_side=0"),
        (dict(n_side=2.5), "n_side must be an integer. Received: n_side=2.5"),
        (dict(foo=1), "Unknown preset overrides \\['foo'\\]"),
        (dict(a_start=0.001), "a_start must lie in"),
        # Checks run_simulation would only make after suite.json was written:
        (dict(n_side=1), "n_side must be at least 2. Received: n_side=1"),
        (dict(n_side="x"), "n_side must be an integer. Received: n_side='x'"),
        (dict(n_sims=2.5), "n_sims must be an integer. Received: n_sims=2.5"),
        (dict(seed=2**64), "seed must be at most 9223372036854775807. Received: seed=18446744073709551616"),
        (dict(preset=3), "preset must be a name or a SimulationPreset. Received: preset=3"),
        (dict(linking_length=1.0), "linking_length .* must be < 1. Received: linking_length=1.0"),
        (dict(box_size=1e-30), "box_size and n_side give wave numbers.*Received: box_size=1e-30"),
    ],
)
def test_bad_parameters_fail_before_any_work(tmp_path, kwargs, message):
    out = tmp_path / "suite"
    with pytest.raises(ValueError, match=message):
        generate_suite(out, progress=False, **kwargs)
    assert not out.exists()


def test_bad_suite_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_sims must be at least 1. Received: n_sims=0"):
        generate_suite(tmp_path / "s", n_sims=0, progress=False)
    with pytest.raises(ValueError, match="seed must be at least 0. Received: seed=-2"):
        generate_suite(tmp_path / "s", seed=-2, progress=False)
    # Path("") is the current directory: refused, not written into.
    with pytest.raises(ValueError, match="out_dir must be a non-empty path. Received: out_dir=''"):
        generate_suite("", progress=False)
    with pytest.raises(ValueError, match="progress must be True or False. Received: progress='no'"):
        generate_suite(tmp_path / "s", progress="no")
    assert not (tmp_path / "s").exists()


def _manifest_text(**changes):
    from tfhalo.sim.suite import _manifest

    manifest = _manifest("quick", resolve_preset("quick", **TINY), 0, 2)
    for key, value in changes.items():
        if key.startswith("sim0_"):
            manifest["simulations"][0][key[5:]] = value
        elif key.startswith("param_"):
            manifest["parameters"][key[6:]] = value
        else:
            manifest[key] = value
    return json.dumps(manifest)


@pytest.mark.parametrize("content, match", [
    ("{not json", r"Cannot read suite manifest .*suite.json: Expecting property name"),
    (b"\xff\xfe{", r"Cannot read suite manifest .*suite.json"),
    ("[1, 2]", r"suite.json is not a tfhalo suite manifest \(format 'list'"),
    ('{"format": "other"}', r"suite.json is not a tfhalo suite manifest \(format 'other'"),
    ('{"format": "tfhalo-suite"}', r"Suite manifest .*suite.json is corrupt: no 'parameters' entry"),
    (_manifest_text(master_seed="a"), r"suite.json is corrupt: master_seed must be an integer"),
    (_manifest_text(n_sims=3), r"suite.json is corrupt: 'simulations' must be a list of n_sims=3 entries"),
    (_manifest_text(param_n_side=1), r"suite.json is corrupt: n_side must be at least 2"),
    (_manifest_text(param_colour=1), r"suite.json is corrupt: Unknown SimulationPreset fields \['colour'\]"),
    (_manifest_text(sim0_seed=None), r"suite.json is corrupt: simulations\[0\].seed must be an integer"),
    (_manifest_text(sim0_file="../../elsewhere.h5"), r"suite.json is corrupt: simulations\[0\].file must be a file name"),
    (_manifest_text(sim0_name=7), r"suite.json is corrupt: simulations\[0\].name must be a file name"),
])
def test_corrupt_manifest_is_an_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "suite.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        list_suite(tmp_path)
    with pytest.raises(ValueError, match=match):
        generate_suite(tmp_path, "quick", n_sims=2, seed=0, progress=False, **TINY)
    assert path.read_bytes() == before  # the manifest is never overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json"]


def test_a_valid_manifest_passes_the_checks(tmp_path):
    (tmp_path / "suite.json").write_text(_manifest_text())
    assert list_suite(tmp_path) == []  # nothing finished yet
    assert list_suite(tmp_path, finished_only=False) == [tmp_path / "sim_000.h5", tmp_path / "sim_001.h5"]


def test_seeds_are_reproducible_and_independent():
    a, b = simulation_seeds(7, 5), simulation_seeds(7, 5)
    assert a == b
    assert len(set(a)) == 5
    assert simulation_seeds(7, 3) == a[:3]  # growing a suite keeps the existing seeds
    assert set(simulation_seeds(8, 5)).isdisjoint(a)
    assert all(0 <= s < 2**63 for s in a)


def test_resolve_preset_overrides():
    p = resolve_preset("paper", n_side=32, box_size=None)
    assert p.n_side == 32 and p.box_size == PRESETS["paper"].box_size
    assert isinstance(p, SimulationPreset)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    paths = generate_suite(out, "quick", n_sims=2, seed=11, progress=False, **TINY)
    return out, paths


def test_suite_layout_and_manifest(suite):
    out, paths = suite
    assert paths == [out / "sim_000.h5", out / "sim_001.h5"]
    manifest = json.loads((out / "suite.json").read_text())
    assert manifest["master_seed"] == 11 and manifest["preset"] == "quick"
    assert [s["seed"] for s in manifest["simulations"]] == simulation_seeds(11, 2)
    assert manifest["parameters"]["n_side"] == 16
    for name in ("sim_000", "sim_001"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["ics", "snapshot_000", "snapshot_000.grp",
                                                                "tfhalo.json"]
    assert not list(out.glob("*.tmp")) and not list(out.glob("*/*.tmp"))
    assert list_suite(out) == paths


def test_suite_simulations_match_run_simulation(suite):
    out, paths = suite
    seed = simulation_seeds(11, 2)[1]
    direct = run_simulation(16, 20.0, seed=seed, n_steps=4, name="sim_001")
    assert_same_simulation(load(paths[1]), direct)


def test_invalid_preset_fails_at_construction():
    with pytest.raises(ValueError, match="n_side must be at least 2"):
        SimulationPreset(n_side=1, box_size=10.0)
    with pytest.raises(ValueError, match="cosmology must be a tfhalo.sim.Cosmology"):
        SimulationPreset(n_side=8, box_size=10.0, cosmology="WMAP5")
    assert SimulationPreset(n_side=8.0, box_size=10).n_side == 8  # normalised to int / float
    assert isinstance(SimulationPreset(n_side=8, box_size=10).box_size, float)


def test_a_corrected_command_runs_after_a_rejected_one(tmp_path):
    out = tmp_path / "suite"
    with pytest.raises(ValueError, match="n_side"):
        generate_suite(out, "quick", n_sims=1, seed=0, progress=False, n_side=1, box_size=20.0, n_steps=1)
    assert not (out / "suite.json").exists()
    assert len(generate_suite(out, "quick", n_sims=1, seed=0, progress=False, n_side=8, box_size=20.0,
                              n_steps=1)) == 1


def test_progress_shows_a_nested_pm_bar(tmp_path, capsys):
    generate_suite(tmp_path / "s", "quick", n_sims=1, seed=0, progress=True, n_side=8, box_size=20.0, n_steps=2)
    err = capsys.readouterr().err
    assert "simulations" in err and "PM steps" in err
    generate_suite(tmp_path / "q", "quick", n_sims=1, seed=0, progress=False, n_side=8, box_size=20.0, n_steps=2)
    assert "PM steps" not in capsys.readouterr().err


def test_suite_velocities_through_both_routes(suite):
    out, paths = suite
    exact, via_pynbody = load(paths[0]), load(out / "sim_000")
    for field in ("initial_velocities", "final_velocities"):
        ref = getattr(exact, field)
        assert ref is not None and np.any(ref), field
        np.testing.assert_allclose(getattr(via_pynbody, field), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_gadget_route_equals_hdf5_route(suite):
    out, _ = suite
    (exact, via_pynbody) = load_suite(out), load_suite(out, via="gadget")
    for a, b in zip(exact, via_pynbody):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.initial_density, b.initial_density)
        np.testing.assert_allclose(a.final_positions, b.final_positions, atol=1e-5 * a.box_size, rtol=0)
        np.testing.assert_array_equal(a.halo_id, b.halo_id)
        np.testing.assert_allclose(a.halos.mass, b.halos.mass, rtol=1e-6)
        np.testing.assert_allclose(a.halos.r200, b.halos.r200, rtol=1e-5)
        np.testing.assert_allclose(a.r_over_r200, b.r_over_r200, rtol=1e-5)
        assert a.seed == b.seed and a.cosmology == b.cosmology
    assert sum(len(s.halos) for s in exact) > 0


def test_resume_skips_finished_and_redoes_interrupted(tmp_path):
    out = tmp_path / "suite"
    paths = generate_suite(out, "quick", n_sims=2, seed=5, progress=False, **TINY)
    reference = load(paths[1])
    # Interrupt sim_001: its .h5 never got renamed into place; temp leftovers remain.
    paths[1].unlink()
    (out / "sim_001.h5.tmp").write_bytes(b"partial")
    (out / "sim_001.tmp").mkdir()
    (out / "sim_001.tmp" / "ics").write_bytes(b"partial")
    first_mtime = os.stat(paths[0]).st_mtime_ns
    first_gadget = os.stat(out / "sim_000" / "snapshot_000").st_mtime_ns
    again = generate_suite(out, "quick", n_sims=2, seed=5, progress=False, **TINY)
    assert again == paths
    assert os.stat(paths[0]).st_mtime_ns == first_mtime
    assert os.stat(out / "sim_000" / "snapshot_000").st_mtime_ns == first_gadget
    assert not (out / "sim_001.h5.tmp").exists() and not (out / "sim_001.tmp").exists()
    assert_same_simulation(load(paths[1]), reference)  # same seed -> identical redo


def test_incomplete_gadget_directory_is_redone(tmp_path):
    out = tmp_path / "suite"
    paths = generate_suite(out, "quick", n_sims=1, seed=6, progress=False, **TINY)
    (out / "sim_000" / "snapshot_000.grp").unlink()
    before = os.stat(paths[0]).st_mtime_ns
    generate_suite(out, "quick", n_sims=1, seed=6, progress=False, **TINY)
    assert (out / "sim_000" / "snapshot_000.grp").is_file()
    assert os.stat(paths[0]).st_mtime_ns != before


def test_other_suite_in_directory_is_refused(suite):
    out, _ = suite
    with pytest.raises(ValueError, match="suite.json.*another suite"):
        generate_suite(out, "quick", n_sims=2, seed=12, progress=False, **TINY)
    with pytest.raises(ValueError, match="another suite"):
        generate_suite(out, "quick", n_sims=2, seed=11, progress=False, n_side=8, box_size=20.0, n_steps=4)
