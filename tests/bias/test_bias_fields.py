"""Argument checks of the bias-model inputs (tfhalo.bias.fields): every bad input names itself."""

import numpy as np
import pytest

from tfhalo.bias.fields import bias_data_from_simulation, density_field, make_bias_data
from tests.helpers.tiny_sims import make_tiny_simulation

M_TH = 1e12
BOX = 20.0


def _catalogue():
    centres = np.array([[1.0, 2.0, 3.0], [14.0, 15.0, 16.0]])
    return np.ones((4, 4, 4)), centres, np.array([2e12, 3e12])


def test_a_good_catalogue_bins_each_halo_to_its_nearest_grid_point():
    rho, centres, masses = _catalogue()
    data = make_bias_data(rho, centres, masses, BOX, M_TH)
    # Grid points at 0, 5, 10, 15: (1, 2, 3) -> (0, 0, 1); (14, 15, 16) -> (3, 3, 3).
    assert data.halo_voxel.tolist() == [np.ravel_multi_index((0, 0, 1), (4,) * 3),
                                        np.ravel_multi_index((3, 3, 3), (4,) * 3)]


@pytest.mark.parametrize("shape", [(3, 2), (6,), (2, 3, 1), (1, 6)])
def test_centres_of_any_shape_but_n_by_3_are_refused_not_reshaped(shape):
    rho, centres, masses = _catalogue()
    bad = centres.T.copy() if shape == (3, 2) else centres.reshape(shape)
    with pytest.raises(ValueError, match=r"halo_centres must have shape \(H, 3\). Received: halo_centres.shape="):
        make_bias_data(rho, bad, masses, BOX, M_TH)


def test_masses_must_be_one_dimensional():
    rho, centres, masses = _catalogue()
    with pytest.raises(ValueError, match=r"halo_masses must have shape \(H,\). Received: halo_masses.shape=\(2, 1\)"):
        make_bias_data(rho, centres, masses[:, None], BOX, M_TH)


@pytest.mark.parametrize("value", [np.inf, np.nan, 0.0, -1.0, "x"])
def test_density_floor_must_be_finite_and_positive(value):
    rho, centres, masses = _catalogue()
    with pytest.raises(ValueError, match=r"density_floor must be .*Received: density_floor="):
        make_bias_data(rho, centres, masses, BOX, M_TH, density_floor=value)


@pytest.mark.parametrize("name, value", [("box_size", np.inf), ("box_size", "x"), ("mass_threshold", np.nan),
                                         ("mass_threshold", -1e12)])
def test_box_and_threshold_must_be_finite_and_positive(name, value):
    rho, centres, masses = _catalogue()
    kwargs = dict(box_size=BOX, mass_threshold=M_TH)
    kwargs[name] = value
    with pytest.raises(ValueError, match=rf"{name} must be .*Received: {name}="):
        make_bias_data(rho, centres, masses, **kwargs)


def test_non_finite_centres_and_masses_are_named():
    rho, centres, masses = _catalogue()
    centres[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"halo_centres must be finite. Received: 1 halos .*halo_centres\[1\]"):
        make_bias_data(rho, centres, masses, BOX, M_TH)
    rho, centres, masses = _catalogue()
    masses[0] = np.inf
    with pytest.raises(ValueError, match=r"halo_masses must be finite and positive. .*halo_masses\[0\]=inf"):
        make_bias_data(rho, centres, masses, BOX, M_TH)


@pytest.mark.parametrize("grid", [np.ones((0, 0, 0)), np.ones((4, 4)), np.ones((4, 4, 5)), [["a"]]])
def test_empty_or_non_cubic_grid_names_one_plus_delta(grid):
    _, centres, masses = _catalogue()
    with pytest.raises(ValueError, match=r"one_plus_delta must be "):
        make_bias_data(grid, centres, masses, BOX, M_TH)


@pytest.fixture(scope="module")
def sim():
    return make_tiny_simulation(n_side=8, box_size=BOX, seed=0, n_halos=4, particle_mass=1e10)


@pytest.mark.parametrize("value, match", [
    (2.7, r"n_grid must be an integer. Received: n_grid=2.7"),
    ("x", r"n_grid must be an integer. Received: n_grid='x'"),
    (0, r"n_grid must be at least 1. Received: n_grid=0"),
])
def test_n_grid_must_be_a_positive_integer(sim, value, match):
    with pytest.raises(ValueError, match=match):
        density_field(sim, value)
    with pytest.raises(ValueError, match=match):
        bias_data_from_simulation(sim, value, mass_threshold=1e11)


def test_bias_data_from_simulation_checks_everything_before_painting(sim, monkeypatch):
    import tfhalo.bias.fields as fields

    def no_work(*args, **kwargs):
        raise AssertionError("density painted before the arguments were checked")

    monkeypatch.setattr(fields, "density_field", no_work)
    for kwargs, match in [(dict(density_floor=np.inf), "density_floor"), (dict(source="gadget"), "source"),
                          (dict(mass_threshold=np.nan), "mass_threshold")]:
        args = dict(n_grid=4, mass_threshold=1e11) | kwargs
        with pytest.raises(ValueError, match=rf"{match} must .*Received: {match}="):
            bias_data_from_simulation(sim, **args)
    with pytest.raises(ValueError, match=r"simulation must be a tfhalo.sim.Simulation. Received: .*dict"):
        bias_data_from_simulation({}, 4, 1e11)
