"""The device-side sub-box path against the NumPy one (runs under TF and JAX)."""

import keras
import numpy as np
import pytest

from tests.helpers.backend import float64_supported
from tfhalo.data.averaging import shell_average
from tfhalo.data.device import DeviceSubboxes, device_shell_average
from tfhalo.data.scalers import InputStandardizer
from tfhalo.data.subboxes import SubboxExtractor, extract_subboxes

N = 16
# Corners, faces and one interior site: wrap-around on both sides of every axis.
EDGE_SITES = np.array([[0, 0, 0], [15, 15, 15], [0, 15, 7], [8, 8, 8], [1, 14, 0], [15, 0, 2]])


def field(seed=0, n=N):
    return np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)


def sites(seed=1, n=N):
    return np.concatenate([EDGE_SITES, np.random.default_rng(seed).integers(0, n, (10, 3))])


def numpy_of(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("size", [1, 2, 5, 6, N])
def test_boxes_equal_the_numpy_path(size):
    f, s = field(), sites()
    got = numpy_of(DeviceSubboxes(f, size)(s))
    want = extract_subboxes(f, s, size)
    assert got.shape == (len(s), size, size, size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # the site itself sits at index size // 2 on every axis
    c = size // 2
    np.testing.assert_array_equal(got[:, c, c, c], f[s[:, 0], s[:, 1], s[:, 2]])


def test_sites_are_taken_modulo_n_and_empty_batches_work():
    f = field(2)
    dev = DeviceSubboxes(f, 5)
    far = np.array([[-1, 16, 33], [-17, -32, 47]])
    np.testing.assert_array_equal(numpy_of(dev(far)), SubboxExtractor(f, 5)(far))
    assert tuple(dev(np.zeros((0, 3), dtype=np.int64)).shape) == (0, 5, 5, 5)
    assert tuple(dev(np.zeros((0, 3), dtype=np.int64), average=True).shape) == (0, 5, 5, 5)


@pytest.mark.parametrize("size", [5, 6, 9])
def test_shell_averages_match_numpy(size):
    f, s = field(3), sites(4)
    dev = DeviceSubboxes(f, size)
    want = shell_average(extract_subboxes(f, s, size))
    got = numpy_of(dev(s, average=True))
    assert got.dtype == np.float32
    # float32 sums on the device vs float64 sums in NumPy
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # voxels beyond the last shell are exactly 0, as in the NumPy path
    np.testing.assert_array_equal(got[want == 0], 0.0)


def test_standalone_shell_average_with_channel_axis_and_custom_radii():
    boxes = np.random.default_rng(5).standard_normal((3, 7, 7, 7, 1)).astype(np.float32)
    np.testing.assert_allclose(numpy_of(device_shell_average(boxes)), shell_average(boxes), rtol=1e-5, atol=1e-6)
    radii = [0.5, 1.5, 2.9]
    np.testing.assert_allclose(numpy_of(device_shell_average(boxes[..., 0], radii)),
                               shell_average(boxes[..., 0], radii), rtol=1e-5, atol=1e-6)
    # radii below every distance but the centre's leave only the centre voxel
    out = numpy_of(device_shell_average(boxes[..., 0], [0.1]))
    np.testing.assert_array_equal(out[:, 3, 3, 3], boxes[:, 3, 3, 3, 0])
    assert np.count_nonzero(out) == 3


def test_standardizer_matches_box_inputs_order():
    """Standardise, then average: what BoxInputs does for the averaged kind."""
    f, s = 3.0 + 2.0 * field(6), sites(7)
    std = InputStandardizer(2.9, 1.7)
    dev = DeviceSubboxes(f, 6, standardizer=std)
    boxes = std.transform(extract_subboxes(f, s, 6))
    np.testing.assert_array_equal(numpy_of(dev(s)), boxes)
    np.testing.assert_allclose(numpy_of(dev(s, average=True)), shell_average(boxes), rtol=1e-5, atol=1e-6)


def test_float64_where_the_backend_computes_it():
    f = np.random.default_rng(8).standard_normal((8, 8, 8))
    if float64_supported():
        got = numpy_of(DeviceSubboxes(f, 3, dtype="float64")(EDGE_SITES % 8))
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, SubboxExtractor(f, 3, dtype=np.float64)(EDGE_SITES % 8))
        boxes = f[None, :5, :5, :5]
        np.testing.assert_allclose(numpy_of(device_shell_average(boxes)), shell_average(boxes), rtol=1e-12, atol=1e-14)
    else:
        with pytest.raises(ValueError, match="dtype must be computable"):
            DeviceSubboxes(f, 3, dtype="float64")
        with pytest.raises(ValueError, match="boxes must be floating .* Received: boxes.dtype=float64"):
            device_shell_average(f[None, :5, :5, :5])


@pytest.mark.parametrize("kwargs, match", [
    ({"field": np.zeros((4, 4, 5))}, r"field must be a cubic .* Received: field.shape=\(4, 4, 5\)"),
    ({"size": 0}, "size must be at least 1. Received: size=0"),
    ({"size": 2.5}, "size must be an integer. Received: size=2.5"),
    ({"size": 9}, "size must not exceed the lattice side n_side=8"),
    ({"dtype": "int32"}, "dtype must be one of .* Received: dtype='int32'"),
    ({"standardizer": InputStandardizer()}, "standardizer must be a fitted InputStandardizer"),
    ({"radii": [2.0, 1.0]}, r"radii must be a non-empty increasing .* Received: radii=\[2. 1.\]"),
    ({"radii": "abc"}, "radii must be an array of numbers. Received: radii='abc'"),
])
def test_bad_construction_is_refused(kwargs, match):
    args = {"field": np.zeros((8, 8, 8), dtype=np.float32), "size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        DeviceSubboxes(**args)


def test_non_finite_field_is_refused():
    f = np.zeros((8, 8, 8), dtype=np.float32)
    f[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"field must be finite. .* first field\[1, 2, 3\]=nan"):
        DeviceSubboxes(f, 3)


def test_bad_calls_are_refused():
    dev = DeviceSubboxes(np.zeros((8, 8, 8), dtype=np.float32), 3)
    with pytest.raises(ValueError, match=r"sites must have shape \(P, 3\). Received: sites.shape=\(2, 2\)"):
        dev(np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="sites must be integer lattice indices"):
        dev(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="average must be True or False. Received: average='yes'"):
        dev(EDGE_SITES % 8, average="yes")
    with pytest.raises(ValueError, match=r"boxes must have shape .* Received: boxes.shape=\(4, 4\)"):
        device_shell_average(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"boxes must be cubes. Received: boxes.shape=\(1, 3, 3, 4\)"):
        device_shell_average(np.zeros((1, 3, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="boxes must be floating"):
        device_shell_average(np.zeros((1, 3, 3, 3), dtype=np.int32))
    with pytest.raises(ValueError, match=r"radii must be a non-empty increasing .* Received: radii=\[\]"):
        device_shell_average(np.zeros((1, 3, 3, 3), dtype=np.float32), radii=[])
