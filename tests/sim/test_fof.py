"""Friends-of-friends against brute force; halo centres and r200."""

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from tfhalo.sim.fof import friends_of_friends, halo_properties


def _brute_force_partition(pos, box, b):
    d = pos[:, None, :] - pos[None, :, :]
    d -= box * np.round(d / box)
    adj = np.sqrt((d**2).sum(-1)) <= b
    _, comp = connected_components(adj, directed=False)
    return comp


def _as_partition(labels):
    groups = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    return sorted(tuple(g) for g in groups.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fof_matches_brute_force_across_the_boundary(seed):
    rng = np.random.default_rng(seed)
    box, b = 10.0, 0.6
    # clumps straddling faces/corners plus a uniform background
    centres = np.array([[0.1, 5.0, 5.0], [9.9, 9.9, 0.05], [5.0, 0.2, 9.8], [4.0, 4.0, 4.0]])
    clumps = [c + 0.4 * rng.standard_normal((40, 3)) for c in centres]
    pos = np.mod(np.concatenate(clumps + [rng.uniform(0, box, (300, 3))]), box)
    expected = _brute_force_partition(pos, box, b)
    labels = friends_of_friends(pos, box, b, min_members=1)
    assert _as_partition(labels) == _as_partition(expected)
    # groups wrap the boundary: a straddling clump is one group
    assert len(set(labels[:40])) <= 3
    # min_members: small groups become -1, sizes descending, labels consecutive
    labels5 = friends_of_friends(pos, box, b, min_members=5)
    sizes = np.bincount(expected)
    big = sizes[expected] >= 5
    assert np.array_equal(labels5 >= 0, big)
    counts = np.bincount(labels5[labels5 >= 0])
    assert np.all(np.diff(counts) <= 0) and np.all(counts >= 5)
    assert _as_partition(labels5[big]) == _as_partition(expected[big])


def test_fof_bad_input():
    pos = np.zeros((10, 3))
    with pytest.raises(ValueError, match="box_size must be positive"):
        friends_of_friends(pos, 0.0, 0.1)
    with pytest.raises(ValueError, match="linking_length"):
        friends_of_friends(pos, 10.0, -0.1)
    with pytest.raises(ValueError, match="positions must have shape"):
        friends_of_friends(np.zeros((10, 2)), 10.0, 0.1)
    with pytest.raises(ValueError, match="min_members"):
        friends_of_friends(pos, 10.0, 0.1, min_members=0)


def _uniform_sphere(rng, n, radius):
    u = rng.standard_normal((n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u * radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3)


def test_centre_across_the_boundary_and_r200_of_uniform_sphere():
    rng = np.random.default_rng(0)
    box, rho_mean, m_p = 100.0, 1.0, 1.0
    n, radius = 4000, 2.0
    # a uniform sphere of density 400 rho_mean: the enclosed density stays
    # above 200 rho_mean out to its edge, so M200 is all n members and r200 is
    # the radius holding them at 200 rho_mean, radius * 2^(1/3).
    m_p = 400 * rho_mean * (4 / 3 * np.pi * radius**3) / n
    centre = np.array([0.3, 99.5, 50.0])  # straddles two faces
    sphere = np.mod(centre + _uniform_sphere(rng, n, radius), box)
    other_centre = np.array([30.0, 30.0, 30.0])
    other = other_centre + _uniform_sphere(rng, 500, 1.0)
    pos = np.concatenate([sphere, other])
    labels = np.concatenate([np.zeros(n, int), np.ones(500, int)])
    com, _ = halo_properties(pos, labels, box, m_p, rho_mean, shrink=False)
    d = com.centre[0] - centre
    d -= box * np.round(d / box)
    assert np.linalg.norm(d) < 3 * radius / np.sqrt(n)  # centre of mass: sampling noise only
    cat, r_rel = halo_properties(pos, labels, box, m_p, rho_mean)
    assert len(cat) == 2
    d = cat.centre[0] - centre
    d -= box * np.round(d / box)
    assert np.linalg.norm(d) < 0.2  # shrinking sphere: a flat core has no peak to find
    assert np.all((cat.centre >= 0) & (cat.centre < box))
    np.testing.assert_allclose(com.centre[1], other_centre, atol=0.1)
    assert cat.mass[0] == pytest.approx(n * m_p) and cat.n_members[1] == 500
    r200_expected = (3 * n * m_p / (4 * np.pi * 200 * rho_mean)) ** (1 / 3)
    assert cat.r200[0] == pytest.approx(r200_expected, rel=1e-9)
    assert cat.r200[0] == pytest.approx(radius * 2 ** (1 / 3), rel=1e-9)
    # members' r / r200 are at most radius / r200 (plus centre error)
    assert np.nanmax(r_rel[:n]) == pytest.approx(2 ** (-1 / 3), abs=0.05)
    # the unwrapped distance, not the raw coordinate difference, is used
    assert np.all(r_rel[:n] < 1.0)


def test_shrinking_sphere_finds_the_main_peak_of_a_merger_across_the_boundary():
    rng = np.random.default_rng(4)
    box = 50.0
    main_c, sat_c = np.array([49.8, 0.1, 25.0]), np.array([1.7, 1.5, 25.0])
    # concentrated main halo (density ~ r^-2: radius uniform in [0, 1]) + a satellite
    u = rng.standard_normal((3000, 3))
    main = u / np.linalg.norm(u, axis=1, keepdims=True) * rng.uniform(0, 1, (3000, 1))
    sat = 0.3 * rng.standard_normal((1500, 3))
    pos = np.mod(np.concatenate([main_c + main, sat_c + sat]), box)
    labels = np.zeros(len(pos), int)
    com, _ = halo_properties(pos, labels, box, 1.0, 1.0, shrink=False)
    cat, _ = halo_properties(pos, labels, box, 1.0, 1.0)

    def dist(c):
        d = c - main_c
        d -= box * np.round(d / box)
        return np.linalg.norm(d)

    assert dist(com.centre[0]) > 0.6  # pulled a third of the way to the satellite
    assert dist(cat.centre[0]) < 0.1
    assert np.all((cat.centre >= 0) & (cat.centre < box))


def test_r200_inside_a_sphere_denser_in_the_middle():
    # core of density 1000 rho_mean (radius 1) in a halo of 20 rho_mean (radius 5):
    # r200 is set by the core + a bit of the envelope: solve exactly.
    rng = np.random.default_rng(1)
    rho_mean = 1.0
    m_p = 0.05
    n_core = int(round(1000 * 4 / 3 * np.pi / m_p))
    n_env = int(round(20 * 4 / 3 * np.pi * (5**3 - 1) / m_p))
    core = _uniform_sphere(rng, n_core, 1.0)
    r_env = (rng.uniform(1, 125, n_env)) ** (1 / 3)
    u = rng.standard_normal((n_env, 3))
    env = u / np.linalg.norm(u, axis=1, keepdims=True) * r_env[:, None]
    pos = np.concatenate([core, env]) + 50.0
    cat, _ = halo_properties(pos, np.zeros(len(pos), int), 100.0, m_p, rho_mean)
    # M(<r) = 1000 V(1) + 20 (V(r) - V(1)) = 200 V(r)  =>  r^3 = 980 / 180
    assert cat.r200[0] == pytest.approx((980 / 180) ** (1 / 3), rel=0.02)


def test_no_halos_and_bad_labels():
    pos = np.random.default_rng(0).uniform(0, 10, (50, 3))
    cat, r_rel = halo_properties(pos, -np.ones(50, int), 10.0, 1.0, 1.0)
    assert len(cat) == 0 and np.all(np.isnan(r_rel))
    with pytest.raises(ValueError, match="labels must have shape"):
        halo_properties(pos, np.zeros(49, int), 10.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="particle_mass must be positive"):
        halo_properties(pos, np.zeros(50, int), 10.0, -1.0, 1.0)
