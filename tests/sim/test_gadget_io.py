"""Gadget snapshots + grp arrays written and read back through pynbody."""

import warnings

import numpy as np
import pynbody
import pytest
import scipy.fft

from tests.sim.io_fakes import fake_simulation
from tfhalo.sim import gadget
from tfhalo.sim.fof import friends_of_friends, halo_properties


def same_partition(a, b):
    """True when two label arrays group the particles identically (labels may differ)."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = np.unique(np.stack([a[a >= 0], b[b >= 0]], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    sim = fake_simulation(n_side=8, box_size=20.0, n_halos=3, seed=1)
    paths = gadget.write_gadget(sim, tmp_path_factory.mktemp("g") / "sim")
    return sim, paths


def test_round_trip_positions_ids_halos(written):
    sim, paths = written
    back = gadget.read_snapshots(paths["final"], paths["initial"], cosmology=sim.cosmology)
    np.testing.assert_allclose(back.final_positions, sim.final_positions, rtol=0, atol=1e-5 * sim.box_size)
    np.testing.assert_allclose(back.initial_positions, sim.initial_positions, rtol=0, atol=1e-5 * sim.box_size)
    np.testing.assert_array_equal(back.ids, sim.ids)
    assert same_partition(back.halo_id, sim.halo_id)
    np.testing.assert_array_equal(back.halo_id, sim.halo_id)  # grp numbering keeps halo order
    assert back.n_side == sim.n_side and back.box_size == pytest.approx(sim.box_size, rel=1e-6)
    assert back.z_initial == pytest.approx(sim.z_initial, rel=1e-6)
    assert back.particle_mass == pytest.approx(sim.particle_mass, rel=1e-6)
    # Halo table: halo_properties of the original positions and memberships.
    ref, r_rel = halo_properties(sim.final_positions, sim.halo_id, sim.box_size, sim.particle_mass,
                                 sim.cosmology.rho_mean)
    np.testing.assert_allclose(back.halos.mass, ref.mass, rtol=1e-6)
    np.testing.assert_allclose(back.halos.centre, ref.centre, rtol=1e-5)
    np.testing.assert_allclose(back.halos.r200, ref.r200, rtol=1e-5)
    np.testing.assert_allclose(back.r_over_r200, r_rel, rtol=1e-5)
    np.testing.assert_allclose(back.halo_mass, np.where(sim.halo_id >= 0, ref.mass[np.maximum(sim.halo_id, 0)], 0))


def test_headers_units_and_velocities(written):
    sim, paths = written
    ics = pynbody.load(str(paths["initial"]))
    a = 1.0 / (1.0 + sim.z_initial)
    assert ics.properties["a"] == pytest.approx(a, rel=1e-12)
    assert ics.header.redshift == pytest.approx(sim.z_initial)
    assert ics.properties["omegaM0"] == sim.cosmology.Om0
    assert ics.properties["omegaL0"] == pytest.approx(1 - sim.cosmology.Om0)
    assert ics.properties["h"] == sim.cosmology.h
    assert float(ics.properties["boxsize"].in_units("Mpc a h^-1")) == pytest.approx(sim.box_size)
    # Gadget units: comoving kpc or Mpc per h through pynbody's unit system; mass 1e10 Msun/h.
    np.testing.assert_allclose(ics["mass"].in_units("Msol h^-1"), sim.particle_mass, rtol=1e-6)
    # Zel'dovich velocity v = a H(a) f(a) psi, H in km/s per Mpc/h = 100 E(a): float64 reference.
    n = sim.n_side
    q = np.stack(np.unravel_index(np.arange(n**3), (n,) * 3), axis=-1) * (sim.box_size / n)
    psi = sim.initial_positions.astype(np.float64) - q
    psi -= sim.box_size * np.round(psi / sim.box_size)
    om_a = sim.cosmology.Om0 / a**3
    e_a = np.sqrt(om_a + 1 - sim.cosmology.Om0)
    expected = psi * a * 100.0 * e_a * float(sim.cosmology.growth_rate(a))
    order = np.argsort(np.asarray(ics["iord"]))
    np.testing.assert_allclose(ics["vel"].in_units("km s^-1")[order], expected, rtol=1e-5, atol=1e-4)
    final = pynbody.load(str(paths["final"]))
    assert final.properties["a"] == pytest.approx(1.0)
    # z = 0 velocities are not kept by a Simulation: the block is written as zeros.
    assert not np.any(final["vel"])


def test_grp_is_a_pynbody_halo_catalogue(written):
    sim, paths = written
    f = pynbody.load(str(paths["final"]))
    f["grp"] = gadget.read_grp(paths["grp"], len(f))
    cat = pynbody.halo.number_array.HaloNumberCatalogue(f, array="grp", ignore=0)
    assert len(cat) == len(sim.halos)
    for k in range(len(sim.halos)):
        np.testing.assert_array_equal(np.sort(cat[k + 1]["iord"]), np.flatnonzero(sim.halo_id == k))


def test_lattice_order_from_shuffled_one_based_ids():
    sim = fake_simulation(n_side=6, seed=2)
    rng = np.random.default_rng(0)
    perm = rng.permutation(sim.n_particles)
    order = gadget.lattice_order(sim.ids[perm] + 1, sim.initial_positions[perm], 6, sim.box_size)
    np.testing.assert_array_equal(perm[order], np.arange(sim.n_particles))


def test_lattice_order_from_positions_when_ids_are_not_lattice_indices():
    sim = fake_simulation(n_side=6, seed=2)
    # Fortran-ordered ids (x fastest, as in GrafIC files) disagree with positions.
    site = np.stack(np.unravel_index(np.arange(216), (6, 6, 6)), axis=-1)
    fortran_ids = np.ravel_multi_index(tuple(site.T), (6, 6, 6), order="F")
    # Cell-centred lattice (offset half a spacing) must be handled too.
    shifted = np.mod(sim.initial_positions + 0.5 * sim.lattice_spacing, sim.box_size)
    order = gadget.lattice_order(fortran_ids, shifted, 6, sim.box_size)
    np.testing.assert_array_equal(order, np.arange(216))


def test_lattice_order_rejects_scrambled_data():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="ics_x.*lattice order"):
        gadget.lattice_order(rng.permutation(64) * 7, rng.uniform(0, 10, (64, 3)), 4, 10.0, name="ics_x")


def test_density_from_displacement_is_exact_for_zeldovich():
    n, box = 16, 32.0
    rng = np.random.default_rng(5)
    delta_k = scipy.fft.rfftn(rng.normal(0, 0.05, (n, n, n)))
    k = 2 * np.pi * np.fft.fftfreq(n, box / n)
    kz = 2 * np.pi * np.fft.rfftfreq(n, box / n)
    kx, ky, kzz = np.meshgrid(k, k, kz, indexing="ij")
    nyq = (np.abs(kx) == np.pi * n / box) | (np.abs(ky) == np.pi * n / box) | (kzz == np.pi * n / box)
    delta_k[nyq] = 0.0
    delta_k[0, 0, 0] = 0.0
    delta = scipy.fft.irfftn(delta_k, s=(n,) * 3)
    k2 = kx**2 + ky**2 + kzz**2
    k2[0, 0, 0] = 1.0
    # Zel'dovich: psi_k = i k delta_k / k^2, so that delta = -div psi.
    psi = np.stack([scipy.fft.irfftn(1j * kk * delta_k / k2, s=(n,) * 3) for kk in (kx, ky, kzz)], axis=-1)
    q = np.stack(np.unravel_index(np.arange(n**3), (n,) * 3), axis=-1) * (box / n)
    pos = np.mod(q + psi.reshape(-1, 3), box)
    rec = gadget.density_from_displacement(pos, n, box)
    np.testing.assert_allclose(rec, delta, atol=1e-6 * np.abs(delta).max() + 1e-7)


def test_fof_halos_when_requested(written):
    sim, paths = written
    back = gadget.read_snapshots(paths["final"], paths["initial"], cosmology=sim.cosmology, halos="fof",
                                 linking_length=0.2, min_members=5)
    ref = friends_of_friends(sim.final_positions, sim.box_size, 0.2 * sim.lattice_spacing, min_members=5)
    np.testing.assert_array_equal(back.halo_id, ref)


def test_header_cosmology_is_used_with_a_warning(written):
    sim, paths = written
    with pytest.warns(UserWarning, match="sigma8"):
        back = gadget.read_snapshots(paths["final"], paths["initial"])
    assert back.cosmology.h == sim.cosmology.h and back.cosmology.Om0 == sim.cosmology.Om0


def test_grp_file_errors(tmp_path):
    path = gadget.write_grp(tmp_path / "a.grp", np.arange(10))
    np.testing.assert_array_equal(gadget.read_grp(path), np.arange(10))
    with pytest.raises(ValueError, match="a.grp.*10 entries.*12"):
        gadget.read_grp(path, 12)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:6]) + "\n")
    with pytest.raises(ValueError, match="a.grp.*declares 10"):
        gadget.read_grp(path)
    with pytest.raises(FileNotFoundError, match="b.grp"):
        gadget.read_grp(tmp_path / "b.grp")


def test_velocities_written_and_read_back_through_pynbody(tmp_path):
    sim = fake_simulation(n_side=6, n_halos=2, seed=3)
    rng = np.random.default_rng(4)
    sim.initial_velocities = rng.normal(0, 20, (216, 3)).astype(np.float32)
    sim.final_velocities = rng.normal(0, 400, (216, 3)).astype(np.float32)
    paths = gadget.write_gadget(sim, tmp_path / "sim")
    # The files hold exactly these peculiar velocities (Gadget km/s sqrt(a), converted by pynbody).
    for key, field in (("initial", "initial_velocities"), ("final", "final_velocities")):
        f = pynbody.load(str(paths[key]))
        order = np.argsort(np.asarray(f["iord"]))
        np.testing.assert_allclose(f["vel"].in_units("km s^-1")[order], getattr(sim, field), rtol=1e-5, atol=1e-3)
    ics = pynbody.load(str(paths["initial"]))
    a = float(ics.properties["a"])
    raw = np.asarray(ics["vel"])[np.argsort(np.asarray(ics["iord"]))]  # file units: km/s sqrt(a)
    np.testing.assert_allclose(raw, sim.initial_velocities / np.sqrt(a), rtol=1e-5, atol=1e-3)
    back = gadget.read_snapshots(paths["final"], paths["initial"], cosmology=sim.cosmology)
    np.testing.assert_allclose(back.final_velocities, sim.final_velocities, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(back.initial_velocities, sim.initial_velocities, rtol=1e-5, atol=1e-3)


def test_simulation_without_final_velocities_reads_back_none(written):
    sim, paths = written
    back = gadget.read_snapshots(paths["final"], paths["initial"], cosmology=sim.cosmology)
    assert back.final_velocities is None  # the all-zero placeholder block
    assert back.initial_velocities is not None  # the Zel'dovich fallback


class _NoIds:
    """A snapshot stand-in whose ``iord`` cannot be loaded."""

    def __init__(self, ancestor=None, n=8):
        self.ancestor = ancestor if ancestor is not None else self
        self.n = n

    def __getitem__(self, key):
        raise KeyError(key)

    def __len__(self):
        return self.n


def test_missing_ids_are_an_error_except_for_grafic():
    with pytest.raises(ValueError, match="particle ids \\(iord\\) of run/snap_5"):
        gadget._ids(_NoIds(), "run/snap_5")
    from pynbody.snapshot.grafic import GrafICSnap

    grafic = object.__new__(type("FakeGrafIC", (GrafICSnap,), {"__init__": lambda self: None}))
    with pytest.warns(UserWarning, match="ics_dir: GrafIC.*file order"):
        ids = gadget._ids(_NoIds(ancestor=grafic, n=8), "ics_dir")
    np.testing.assert_array_equal(ids, np.arange(8))


def test_write_grp_memory_is_bounded(tmp_path):
    import tracemalloc

    numbers = np.random.default_rng(0).integers(10**6, 10**7, 400_000)
    tracemalloc.start()
    try:
        gadget.write_grp(tmp_path / "big.grp", numbers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One string of all numbers (the old writer) peaks at ~30 MB of Python objects here.
    assert peak < 12e6, peak
    np.testing.assert_array_equal(gadget.read_grp(tmp_path / "big.grp", numbers.size), numbers)
    lines = (tmp_path / "big.grp").read_text().split("\n")
    assert lines[0] == "400000" and lines[1] == str(numbers[0]) and lines[-1] == ""
