"""tfhalo.sim.load: suite files, generated directories and real snapshots, with clear errors."""

import shutil
import warnings

import numpy as np
import pynbody
import pytest

from tests.sim.io_fakes import fake_simulation
from tests.sim.test_hdf5 import assert_same_simulation
from tfhalo.sim import gadget, hdf5, load
from tfhalo.sim.suite import write_simulation_files


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    sim = fake_simulation(n_side=8, box_size=16.0, n_halos=3, seed=4, name="sim_000")
    write_simulation_files(sim, out, "sim_000")
    return sim, out


def test_load_suite_file_is_exact(suite_dir):
    sim, out = suite_dir
    assert_same_simulation(load(out / "sim_000.h5"), sim)


def test_load_generated_directory_through_pynbody(suite_dir):
    sim, out = suite_dir
    back = load(out / "sim_000")
    assert back.name == "sim_000" and back.seed == sim.seed and back.cosmology == sim.cosmology
    np.testing.assert_array_equal(back.initial_density, sim.initial_density)  # exact, from sim_000.h5
    np.testing.assert_array_equal(back.ids, sim.ids)
    np.testing.assert_allclose(back.final_positions, sim.final_positions, atol=1e-5 * sim.box_size, rtol=0)
    np.testing.assert_array_equal(back.halo_id, sim.halo_id)


def test_generated_directory_without_suite_file_reconstructs_density(suite_dir, tmp_path):
    sim, out = suite_dir
    shutil.copytree(out / "sim_000", tmp_path / "alone")
    back = load(tmp_path / "alone")
    expected = gadget.density_from_displacement(sim.initial_positions, sim.n_side, sim.box_size)
    np.testing.assert_allclose(back.initial_density, expected, atol=1e-5)


def test_load_real_snapshot_pair_with_explicit_halos(suite_dir, tmp_path):
    sim, out = suite_dir
    # A "user's run": snapshots renamed, grp array elsewhere.
    shutil.copy(out / "sim_000" / "snapshot_000", tmp_path / "snap_042")
    shutil.copy(out / "sim_000" / "ics", tmp_path / "ic_file")
    shutil.copy(out / "sim_000" / "snapshot_000.grp", tmp_path / "groups.grp")
    back = load(tmp_path / "snap_042", initial=tmp_path / "ic_file", halos=tmp_path / "groups.grp",
                cosmology=sim.cosmology)
    assert back.name == "snap_042"
    np.testing.assert_array_equal(back.halo_id, sim.halo_id)
    np.testing.assert_allclose(back.initial_positions, sim.initial_positions, atol=1e-5 * sim.box_size, rtol=0)


def test_missing_files_are_named(suite_dir, tmp_path):
    _, out = suite_dir
    with pytest.raises(FileNotFoundError, match="nope_123"):
        load(tmp_path / "nope_123")
    with pytest.raises(FileNotFoundError, match="ics_missing"):
        load(out / "sim_000" / "snapshot_000", initial=tmp_path / "ics_missing")


def test_snapshot_without_initial_conditions(suite_dir):
    _, out = suite_dir
    with pytest.raises(ValueError, match="snapshot_000.*initial="):
        load(out / "sim_000" / "snapshot_000")


def test_suite_directory_is_not_one_simulation(tmp_path):
    (tmp_path / "suite.json").write_text("{}")
    with pytest.raises(ValueError, match="suite directory"):
        load(tmp_path)


def test_truncated_snapshot_is_named(suite_dir, tmp_path):
    _, out = suite_dir
    data = (out / "sim_000" / "snapshot_000").read_bytes()
    (tmp_path / "cut_snap").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OSError, match="cut_snap"):
        load(tmp_path / "cut_snap", initial=out / "sim_000" / "ics")


def test_truncated_suite_file_is_named(suite_dir, tmp_path):
    _, out = suite_dir
    data = (out / "sim_000.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:1000])
    with pytest.raises(OSError, match="cut.h5"):
        load(tmp_path / "cut.h5")


def test_particle_count_mismatch_names_both_files(suite_dir, tmp_path):
    sim, out = suite_dir
    small = gadget.write_gadget(fake_simulation(n_side=4, box_size=16.0, n_halos=1), tmp_path / "small")
    with pytest.raises(ValueError, match=r"snapshot_000.*512.*small/ics.*64"):
        load(out / "sim_000" / "snapshot_000", initial=small["initial"])


def test_redshift_order_is_checked(suite_dir):
    _, out = suite_dir
    with pytest.raises(ValueError, match="Redshift order"):
        load(out / "sim_000" / "ics", initial=out / "sim_000" / "snapshot_000")


def test_mismatched_ids_are_rejected(suite_dir, tmp_path):
    sim, out = suite_dir
    f = pynbody.load(str(out / "sim_000" / "ics"))
    f["iord"] = np.asarray(f["iord"]) + 1000
    f.write(filename=str(tmp_path / "ics_shifted"))
    with pytest.raises(ValueError, match="ids of .*differ"):
        load(out / "sim_000" / "snapshot_000", initial=tmp_path / "ics_shifted", cosmology=sim.cosmology)


def write_gadget_hdf5(path, positions, ids, sim, redshift):
    """A minimal Gadget-2 HDF5 snapshot (pynbody reads these but cannot write them)."""
    import h5py

    n = len(ids)
    with h5py.File(path, "w") as f:
        header = f.create_group("Header")
        npart = np.array([0, n, 0, 0, 0, 0])
        header.attrs.update({
            "NumPart_ThisFile": npart.astype(np.int32), "NumPart_Total": npart.astype(np.uint32),
            "NumPart_Total_HighWord": np.zeros(6, np.uint32),
            "MassTable": np.array([0, sim.particle_mass / 1e10, 0, 0, 0, 0]),
            "Time": 1.0 / (1.0 + redshift), "Redshift": float(redshift), "BoxSize": sim.box_size,
            "Omega0": sim.cosmology.Om0, "OmegaLambda": 1 - sim.cosmology.Om0, "HubbleParam": sim.cosmology.h,
            "NumFilesPerSnapshot": 1, "Flag_Sfr": 0, "Flag_Cooling": 0, "Flag_Feedback": 0,
            "Flag_StellarAge": 0, "Flag_Metals": 0, "Flag_DoublePrecision": 0,
        })
        part = f.create_group("PartType1")
        part.create_dataset("Coordinates", data=positions.astype(np.float32))
        part.create_dataset("Velocities", data=np.zeros((n, 3), np.float32))
        part.create_dataset("ParticleIDs", data=ids.astype(np.uint64))


def test_load_gadget_hdf5_snapshots_in_shuffled_order(tmp_path):
    sim = fake_simulation(n_side=6, box_size=12.0, n_halos=2, seed=9)
    rng = np.random.default_rng(1)
    p_final, p_init = rng.permutation(216), rng.permutation(216)
    write_gadget_hdf5(tmp_path / "snap_005.hdf5", sim.final_positions[p_final], sim.ids[p_final] + 1, sim, 0.0)
    write_gadget_hdf5(tmp_path / "ics.hdf5", sim.initial_positions[p_init], sim.ids[p_init] + 1, sim, 99.0)
    # A grp array in the final snapshot's file order, -1 = no halo.
    np.save(tmp_path / "groups.npy", np.where(sim.halo_id >= 0, sim.halo_id + 1, -1)[p_final])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynbody: no unit attributes, Gadget default units used
        back = load(tmp_path / "snap_005.hdf5", initial=tmp_path / "ics.hdf5", halos=tmp_path / "groups.npy",
                    cosmology=sim.cosmology)
    np.testing.assert_array_equal(back.ids, sim.ids + 1)
    np.testing.assert_allclose(back.final_positions, sim.final_positions, atol=1e-5 * sim.box_size, rtol=0)
    np.testing.assert_allclose(back.initial_positions, sim.initial_positions, atol=1e-5 * sim.box_size, rtol=0)
    np.testing.assert_array_equal(back.halo_id, sim.halo_id)
    assert back.particle_mass == pytest.approx(sim.particle_mass, rel=1e-6)  # pynbody keeps float32 masses
    assert back.z_initial == pytest.approx(99.0)


def test_no_halo_catalogue_is_a_clear_error(suite_dir):
    sim, out = suite_dir
    with pytest.raises(ValueError, match="No halo catalogue found for .*snapshot_000.*halos='fof'"):
        load(out / "sim_000" / "snapshot_000", initial=out / "sim_000" / "ics", halos="pynbody",
             cosmology=sim.cosmology)


def test_non_finite_suite_file_is_refused(suite_dir, tmp_path):
    import h5py

    _, out = suite_dir
    shutil.copy(out / "sim_000.h5", tmp_path / "v.h5")
    with h5py.File(tmp_path / "v.h5", "r+") as f:
        f["initial_density"][4, 4, 4] = np.nan
    with pytest.raises(ValueError, match=r"initial_density of .*v.h5 must be finite.*initial_density\[4, 4, 4\]=nan"):
        load(tmp_path / "v.h5")


def test_non_finite_initial_density_for_snapshots_is_refused(suite_dir):
    sim, out = suite_dir
    density = sim.initial_density.copy()
    density[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"initial_density of .*snapshot_000 must be finite.*\[0, 1, 2\]=nan"):
        load(out / "sim_000" / "snapshot_000", initial=out / "sim_000" / "ics", initial_density=density,
             cosmology=sim.cosmology)


def test_empty_directory_and_foreign_files_say_what_was_found(tmp_path):
    import h5py

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.* is an empty directory.*expected"):
        load(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"other.* is a directory holding notes.txt.*not a tfhalo simulation directory"):
        load(tmp_path / "other")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["temperature"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"foreign.h5 is an HDF5 file with \['temperature'\].*neither a tfhalo "
                                         r"simulation file.*nor a Gadget HDF5 snapshot"):
        load(tmp_path / "foreign.h5")
    (tmp_path / "blank").write_bytes(b"")
    with pytest.raises(ValueError, match=r"blank is an empty file"):
        load(tmp_path / "blank")
    for path in (tmp_path / "empty", tmp_path / "foreign.h5"):
        with pytest.raises(ValueError) as info:
            load(path)
        assert "a snapshot; pass its initial conditions" not in str(info.value)
