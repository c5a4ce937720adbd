"""Suite HDF5 files: exact round trip, atomic writes, clear errors."""

import h5py
import numpy as np
import pytest

from tests.sim.io_fakes import fake_simulation
from tfhalo.sim import hdf5

PARTICLE_FIELDS = ("ids", "initial_positions", "final_positions", "halo_id", "halo_mass", "r_over_r200")


def assert_same_simulation(a, b):
    assert (a.box_size, a.n_side, a.z_initial, a.particle_mass, a.seed, a.name) == (
        b.box_size, b.n_side, b.z_initial, b.particle_mass, b.seed, b.name)
    assert a.cosmology == b.cosmology
    for field in PARTICLE_FIELDS + ("initial_density",):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    for field in ("mass", "centre", "r200", "n_members"):
        np.testing.assert_array_equal(getattr(a.halos, field), getattr(b.halos, field), err_msg=field)
    for field in ("initial_velocities", "final_velocities"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert x.dtype == y.dtype == np.float32, field
            np.testing.assert_array_equal(x, y, err_msg=field)


def test_round_trip_is_bit_exact(tmp_path):
    sim = fake_simulation(n_side=6, n_halos=2, seed=3)
    path = hdf5.write_simulation(sim, tmp_path / "sim.h5")
    back = hdf5.read_simulation(path)
    assert_same_simulation(sim, back)
    assert not hdf5.temporary_path(path).exists()
    meta = hdf5.read_metadata(path)
    assert meta["format_version"] == hdf5.FORMAT_VERSION
    import tfhalo

    assert meta["tfhalo_version"] == tfhalo.__version__


def test_round_trip_without_seed_or_halos(tmp_path):
    sim = fake_simulation(n_side=4, n_halos=0)
    sim.seed = None
    back = hdf5.read_simulation(hdf5.write_simulation(sim, tmp_path / "s.h5"))
    assert back.seed is None and len(back.halos) == 0
    assert_same_simulation(sim, back)


def test_schema_matches_documentation(tmp_path):
    sim = fake_simulation(n_side=4)
    path = hdf5.write_simulation(sim, tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        assert f["initial_density"].shape == (4, 4, 4)
        assert sorted(f["particles"]) == sorted(PARTICLE_FIELDS)
        assert f["particles/final_positions"].shape == (64, 3)
        assert sorted(f["halos"]) == ["centre", "mass", "n_members", "r200"]
        assert sorted(f["cosmology"].attrs) == ["Ob0", "Om0", "h", "ns", "sigma8"]
        assert bool(f.attrs["complete"])


def test_incomplete_file_is_rejected(tmp_path):
    sim = fake_simulation(n_side=4)
    path = hdf5.write_simulation(sim, tmp_path / "s.h5")
    with h5py.File(path, "a") as f:  # what an interrupted writer leaves: no marker
        del f.attrs["complete"]
    assert not hdf5.is_complete(path)
    with pytest.raises(ValueError, match="s.h5.*incomplete"):
        hdf5.read_simulation(path)


def test_missing_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.h5"):
        hdf5.read_simulation(tmp_path / "nothere.h5")
    path = hdf5.write_simulation(fake_simulation(n_side=6), tmp_path / "cut.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not hdf5.is_complete(path)
    with pytest.raises(OSError, match="cut.h5"):
        hdf5.read_simulation(path)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    sim = fake_simulation(n_side=4)
    target = tmp_path / "s.h5"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hdf5.os, "replace", boom)
    with pytest.raises(RuntimeError):
        hdf5.write_simulation(sim, target)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="Simulation"):
        hdf5.write_simulation({"box_size": 1}, tmp_path / "x.h5")
    with pytest.raises(OSError, match="does not exist"):
        hdf5.write_simulation(fake_simulation(n_side=4), tmp_path / "no" / "x.h5")


def test_velocities_round_trip_and_are_optional(tmp_path):
    sim = fake_simulation(n_side=5, n_halos=1, seed=4)
    rng = np.random.default_rng(9)
    sim.initial_velocities = rng.normal(0, 30, (125, 3)).astype(np.float32)
    sim.final_velocities = rng.normal(0, 300, (125, 3)).astype(np.float32)
    back = hdf5.read_simulation(hdf5.write_simulation(sim, tmp_path / "v.h5"))
    assert_same_simulation(sim, back)
    # A file without the optional datasets still loads.
    with h5py.File(tmp_path / "v.h5", "r+") as f:
        del f["particles/initial_velocities"], f["particles/final_velocities"]
    old = hdf5.read_simulation(tmp_path / "v.h5")
    assert old.initial_velocities is None and old.final_velocities is None
    np.testing.assert_array_equal(old.final_positions, sim.final_positions)


@pytest.mark.parametrize("dataset, index", [
    ("initial_density", (1, 2, 3)),
    ("particles/final_positions", (5, 0)),
    ("particles/halo_mass", (7,)),
    ("halos/centre", (0, 2)),
])
def test_non_finite_values_are_refused_on_read(tmp_path, dataset, index):
    sim = fake_simulation(n_side=4, n_halos=2)
    path = hdf5.write_simulation(sim, tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        data = f[dataset][...]
        data[index] = np.nan
        f[dataset][...] = data
    field = dataset.split("/")[-1]
    where = ", ".join(map(str, index))
    with pytest.raises(ValueError, match=rf"{field} of .*s.h5 must be finite. Received: 1 non-finite .*{field}\[{where}\]=nan"):
        hdf5.read_simulation(path)
    if field == "initial_density":
        with pytest.raises(ValueError, match=r"initial_density of .*s.h5 must be finite"):
            hdf5.read_initial_density(path)


def test_non_finite_simulation_is_not_written(tmp_path):
    sim = fake_simulation(n_side=4)
    sim.initial_density[0, 0, 1] = -np.inf
    with pytest.raises(ValueError, match=r"initial_density of simulation 'fake' must be finite.*\[0, 0, 1\]=-inf"):
        hdf5.write_simulation(sim, tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []
