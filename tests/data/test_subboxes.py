import numpy as np
import pytest

from tfhalo.data.subboxes import SubboxExtractor, extract_subboxes


def slow_subbox(field, site, size):
    n = field.shape[0]
    half = size // 2
    out = np.empty((size, size, size), dtype=field.dtype)
    for a in range(size):
        for b in range(size):
            for c in range(size):
                out[a, b, c] = field[(site[0] + a - half) % n, (site[1] + b - half) % n,
                                     (site[2] + c - half) % n]
    return out


@pytest.mark.parametrize("size", [1, 4, 5, 9])
def test_matches_slow_reference_including_wraparound(size):
    rng = np.random.default_rng(0)
    field = rng.normal(size=(9, 9, 9)).astype(np.float32)
    # corners and faces force wrap-around on both sides of every axis
    sites = np.array([[0, 0, 0], [8, 8, 8], [0, 8, 4], [4, 4, 4], [1, 7, 0]])
    boxes = extract_subboxes(field, sites, size)
    assert boxes.shape == (len(sites), size, size, size)
    for box, site in zip(boxes, sites):
        np.testing.assert_array_equal(box, slow_subbox(field, site, size))


def test_site_sits_at_centre_index():
    field = np.arange(10**3, dtype=np.float32).reshape(10, 10, 10)
    site = np.array([[9, 0, 3]])
    box = SubboxExtractor(field, 7)(site)
    assert box[0, 3, 3, 3] == field[9, 0, 3]


def test_box_larger_than_lattice_is_rejected():
    with pytest.raises(ValueError, match="size must not exceed the lattice side n_side=8"):
        extract_subboxes(np.zeros((8, 8, 8)), [[0, 0, 0]], 9)


def test_bad_sites_rejected():
    ex = SubboxExtractor(np.zeros((8, 8, 8)), 3)
    with pytest.raises(ValueError, match="sites must have shape"):
        ex(np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="integer"):
        ex(np.zeros((2, 3)))
