import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_simulation, make_tiny_suite
from tfhalo.data.particles import SimulationSplit, build_particle_sets, eligible_particles, split_simulations


@pytest.fixture(scope="module")
def suite():
    return make_tiny_suite(5, seed=10)


def test_train_validation_test_come_from_disjoint_simulations(suite):
    sets = build_particle_sets(suite, 300, 50, 80, log_mass_range=(10, 14), seed=3)
    s = sets["split"]
    assert set(s.train).isdisjoint(s.validation) and set(s.train).isdisjoint(s.test)
    assert set(s.validation).isdisjoint(s.test)
    assert set(sets["train"].simulations()) <= set(s.train)
    assert set(sets["validation"].simulations()) == set(s.validation)
    assert set(sets["test"].simulations()) == set(s.test)
    assert len(sets["validation"]) == 50 and len(sets["test"]) == 80
    # no particle repeated inside a set
    keys = sets["train"].sim_index * 10**9 + sets["train"].particle_id
    assert np.unique(keys).size == keys.size


def test_selection_respects_mass_range_and_labels(suite):
    lo, hi = 11.5, 12.2
    p = eligible_particles(suite[0], 0, (lo, hi))
    assert len(p) > 0
    assert np.all((p.log_mass >= lo) & (p.log_mass <= hi))
    np.testing.assert_allclose(p.log_mass, np.log10(suite[0].halo_mass[p.particle_id]))
    expected = np.sum((suite[0].halo_mass > 0) & (np.log10(np.maximum(suite[0].halo_mass, 1)) >= lo)
                      & (np.log10(np.maximum(suite[0].halo_mass, 1)) <= hi))
    assert len(p) == expected


def test_seeded_and_reproducible(suite):
    a = build_particle_sets(suite, 100, 20, 30, log_mass_range=(10, 14), seed=7)
    b = build_particle_sets(suite, 100, 20, 30, log_mass_range=(10, 14), seed=7)
    c = build_particle_sets(suite, 100, 20, 30, log_mass_range=(10, 14), seed=8)
    np.testing.assert_array_equal(a["train"].particle_id, b["train"].particle_id)
    assert not np.array_equal(a["train"].particle_id, c["train"].particle_id)


def test_balanced_sampling_flattens_mass_distribution(suite):
    kw = dict(log_mass_range=(10, 14), seed=1)
    nat = build_particle_sets(suite, 200, 10, 10, balanced=False, **kw)["train"].log_mass
    bal = build_particle_sets(suite, 200, 10, 10, balanced=True, **kw)["train"].log_mass
    # the heaviest halos dominate by particle count; balancing lowers their share
    cut = np.median(nat)
    assert np.mean(bal < cut) > np.mean(nat < cut)


def test_bad_input(suite):
    with pytest.raises(ValueError, match="low < high"):
        build_particle_sets(suite, 10, 10, 10, log_mass_range=(13, 11))
    with pytest.raises(ValueError, match="no train particle.*widen log_mass_range"):
        build_particle_sets(suite, 10, 10, 10, log_mass_range=(15, 16))
    empty = make_tiny_simulation(n_halos=0, seed=99)
    with pytest.raises(ValueError, match="has no halos"):
        eligible_particles(empty, 0)
    with pytest.raises(ValueError, match="n_simulations must be at least .* = 3"):
        split_simulations(2)


@pytest.mark.parametrize("split", [
    SimulationSplit(train=(0,), validation=(2,), test=(-1,)),   # -1 aliases simulation 2
    SimulationSplit(train=(), validation=(1,), test=(2,)),      # empty
    SimulationSplit(train=(0,), validation=(1,), test=(3,)),    # out of range
    SimulationSplit(train=(0, 1), validation=(1,), test=(2,)),  # overlap
    SimulationSplit(train=(0.5,), validation=(1,), test=(2,)),  # not an integer
])
def test_bad_user_split_is_rejected_naming_split(split):
    sims = make_tiny_suite(3, seed=5, n_side=8)
    with pytest.raises(ValueError, match=r"split.*Received: split=SimulationSplit"):
        build_particle_sets(sims, 10, 5, 5, log_mass_range=(10, 14), split=split)


def test_sample_size_errors_name_the_argument():
    sims = make_tiny_suite(3, seed=5, n_side=8)
    with pytest.raises(ValueError, match=r"n_train must be at least 1. Received: n_train=0"):
        build_particle_sets(sims, 0, 5, 5, log_mass_range=(10, 14))
    with pytest.raises(ValueError, match=r"n_test must be an integer. Received: n_test='a'"):
        build_particle_sets(sims, 10, 5, "a", log_mass_range=(10, 14))


def test_particle_sets_use_lattice_rows_not_snapshot_ids(suite):
    """A loaded Gadget run often has 1-based ids: inputs must still centre on the right site."""
    import dataclasses

    from tfhalo.data import BoxInputs

    sim = suite[0]
    shifted = dataclasses.replace(sim, ids=sim.ids + 1)  # what a 1-based snapshot gives
    p = eligible_particles(shifted, 0, (10, 15))
    q = eligible_particles(sim, 0, (10, 15))
    np.testing.assert_array_equal(p.particle_id, q.particle_id)
    np.testing.assert_array_equal(shifted.ids[p.particle_id], p.particle_id + 1)
    # The box of each particle is centred on its own lattice site's density value.
    inputs = BoxInputs([shifted], kind="raw", size=5)
    boxes = inputs.unstandardized(np.zeros(8, dtype=np.int64), p.particle_id[:8])
    sites = shifted.lattice_sites(p.particle_id[:8])
    centre = boxes[:, 2, 2, 2]
    expected = shifted.initial_density[tuple(sites.T)]
    np.testing.assert_allclose(centre, expected, rtol=1e-6)
