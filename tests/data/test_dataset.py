import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.data import BoxInputs, HaloDataset, LabelScaler, build_particle_sets, extract_subboxes, shell_average


@pytest.fixture(scope="module")
def setup():
    sims = make_tiny_suite(4, seed=20, n_side=12)
    sets = build_particle_sets(sims, 150, 37, 45, log_mass_range=(10, 14), seed=0)
    return sims, sets


def test_inputs_equal_standardised_subboxes(setup):
    sims, sets = setup
    inputs = BoxInputs(sims, kind="raw", size=7)
    std = inputs.fit_standardizer(sets["train"], max_particles=100)
    p = sets["test"].subset(slice(0, 5))
    x = inputs(p.sim_index, p.particle_id)
    assert x.shape == (5, 7, 7, 7, 1) and x.dtype == np.float32
    for k in range(5):
        sim = sims[p.sim_index[k]]
        ref = extract_subboxes(sim.initial_density, sim.lattice_sites([p.particle_id[k]]), 7)[0]
        np.testing.assert_allclose(x[k, ..., 0], (ref - std.mean) / std.std, rtol=1e-5, atol=1e-5)
    avg = BoxInputs(sims, kind="averaged", size=7, standardizer=std)(p.sim_index, p.particle_id)
    np.testing.assert_allclose(avg, shell_average(x), atol=1e-6)


def test_prediction_dataset_yields_every_sample_including_partial_batch(setup):
    sims, sets = setup
    inputs = BoxInputs(sims, kind="raw", size=5)
    inputs.fit_standardizer(sets["validation"])
    ds = HaloDataset(inputs, sets["validation"], None, batch_size=8)  # 37 = 4 * 8 + 5
    assert len(ds) == 5
    sizes = [ds[i][0].shape[0] for i in range(len(ds))]
    assert sizes == [8, 8, 8, 8, 5]
    got = np.concatenate([ds[i][0] for i in range(len(ds))])
    np.testing.assert_array_equal(got, inputs(sets["validation"].sim_index, sets["validation"].particle_id))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_shuffle_is_seeded_and_a_permutation_each_epoch(setup):
    sims, sets = setup
    inputs = BoxInputs(sims, kind="raw", size=5)
    inputs.fit_standardizer(sets["train"])
    scaler = LabelScaler().fit(sets["train"].log_mass)
    a = HaloDataset(inputs, sets["train"], scaler, batch_size=32, shuffle=True, seed=3)
    b = HaloDataset(inputs, sets["train"], scaler, batch_size=32, shuffle=True, seed=3)
    labels = lambda ds: np.concatenate([ds[i][1][:, 0] for i in range(len(ds))])  # noqa: E731
    la, lb = labels(a), labels(b)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_allclose(np.sort(la), np.sort(scaler.transform(sets["train"].log_mass)), rtol=1e-6)
    a.on_epoch_end()
    la2 = labels(a)
    assert not np.array_equal(la, la2)
    np.testing.assert_allclose(np.sort(la2), np.sort(la))


def test_bad_input(setup):
    sims, sets = setup
    with pytest.raises(ValueError, match="size must not exceed the smallest simulation lattice"):
        BoxInputs(sims, kind="raw", size=13)
    with pytest.raises(ValueError, match="kind must be one of"):
        BoxInputs(sims, kind="final")
    with pytest.raises(RuntimeError, match="no fitted standardizer"):
        BoxInputs(sims, kind="raw", size=5)([0], [0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="z0", z0_width=-1.0), r"z0_width must be positive. Received: z0_width=-1.0"),
    (dict(kind="z0", z0_transform="bad"), r"z0_transform must be one of .*Received: z0_transform='bad'"),
    (dict(kind="raw", size="a"), r"size must be an integer. Received: size='a'"),
    (dict(kind="raw", size=4.5), r"size must be an integer. Received: size=4.5"),
])
def test_box_inputs_reject_bad_arguments_at_construction(setup, kwargs, match):
    sims, _ = setup
    with pytest.raises(ValueError, match=match):
        BoxInputs(sims, **kwargs)


def test_dataset_rejects_fractional_batch_size_and_bad_workers(setup):
    sims, sets = setup
    inputs = BoxInputs(sims, kind="raw", size=5)
    with pytest.raises(ValueError, match=r"batch_size must be an integer. Received: batch_size=2.7"):
        HaloDataset(inputs, sets["train"], batch_size=2.7)
    with pytest.raises(ValueError, match=r"workers must be at least 1. Received: workers=0"):
        HaloDataset(inputs, sets["train"], workers=0)
    with pytest.raises(ValueError, match=r"size must be an integer. Received: size='a'"):
        extract_subboxes(sims[0].initial_density, np.zeros((1, 3), dtype=int), "a")


@pytest.mark.parametrize("kind, field, index", [
    ("raw", "initial_density", (3, 4, 5)),
    ("averaged", "initial_density", (0, 0, 0)),
    ("z0", "final_positions", (17, 2)),
])
def test_non_finite_simulation_is_refused(kind, field, index):
    from tests.helpers.tiny_sims import make_tiny_simulation

    good, bad = make_tiny_simulation(n_side=8, seed=1), make_tiny_simulation(n_side=8, seed=2, name="bad")
    getattr(bad, field)[index] = np.inf
    where = ", ".join(map(str, index))
    with pytest.raises(ValueError, match=rf"{field} of simulation 'bad' must be finite.*{field}\[{where}\]=inf"):
        BoxInputs([good, bad], kind=kind, size=5)


def test_dataset_refuses_non_finite_labels(setup):
    sims, sets = setup
    inputs = BoxInputs(sims, kind="raw", size=5)
    particles = sets["train"]
    log_mass = particles.log_mass.copy()
    log_mass[7] = np.nan
    broken = type(particles)(particles.sim_index, particles.particle_id, log_mass, particles.r_over_r200)
    scaler = LabelScaler().fit(particles.log_mass)
    with pytest.raises(ValueError, match=r"log_mass of particles must be finite.*log_mass\[7\]=nan"):
        HaloDataset(inputs, broken, scaler)
    HaloDataset(inputs, broken, None)  # prediction needs no labels
