"""Tests of MultipoleConv3D, multipole_basis and real_spherical_harmonic."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy import ndimage, special

from tests.helpers.equivariance import (
    assert_equivariant,
    cube_symmetries,
    harmonic_representation,
)
from tfhalo.layers import MultipoleConv3D, multipole_basis, real_spherical_harmonic

from tests.helpers.backend import BACKEND, PRECISE
from tests.helpers.backend import to_numpy as _to_numpy

RTOL = {"float64": 1e-11, "float32": 2e-5}[PRECISE]


def _scipy_real_harmonic(l, m, x, y, z):
    """Real Y_lm without Condon-Shortley phase, from scipy's complex Y_l^m."""
    r = np.sqrt(x * x + y * y + z * z)
    theta = np.arccos(np.clip(z / r, -1, 1))
    phi = np.arctan2(y, x)
    am = abs(m)
    # scipy's Y_l^m carries (-1)^m; multiplying by (-1)^m removes it.
    value = special.sph_harm_y(l, am, theta, phi)
    if m == 0:
        return value.real
    part = value.real if m > 0 else value.imag
    return math.sqrt(2.0) * (-1) ** am * part


def _randomize_weights(layer, seed):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(size=w.shape).astype(w.dtype))


# ---------------------------------------------------------------- harmonics


def test_l1_harmonics_are_y_z_x():
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(3, 50))
    r = np.sqrt(x * x + y * y + z * z)
    c = math.sqrt(3 / (4 * math.pi))
    for m, comp in zip((-1, 0, 1), (y, z, x)):
        np.testing.assert_allclose(real_spherical_harmonic(1, m, x, y, z), c * comp / r, rtol=1e-13)


@pytest.mark.parametrize("l", range(5))
def test_harmonics_match_scipy(l):
    rng = np.random.default_rng(l)
    x, y, z = rng.normal(size=(3, 40))
    # include directions in every octant and on the axes / poles
    x = np.concatenate([x, [0.0, 0.0, -1.0, 0.0]])
    y = np.concatenate([y, [0.0, -2.0, 0.0, 0.0]])
    z = np.concatenate([z, [3.0, 0.0, 0.0, -1.0]])
    for m in range(-l, l + 1):
        np.testing.assert_allclose(
            real_spherical_harmonic(l, m, x, y, z),
            _scipy_real_harmonic(l, m, x, y, z),
            atol=1e-12,
        )


def test_harmonics_orthonormal_on_sphere():
    # Gauss-Legendre in cos(theta) x uniform phi is exact for these degrees.
    nodes, weights = np.polynomial.legendre.leggauss(12)
    phi = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ct, ph = np.meshgrid(nodes, phi, indexing="ij")
    w = np.repeat(weights[:, None], phi.size, axis=1) * (2 * np.pi / phi.size)
    st = np.sqrt(1 - ct**2)
    x, y, z = st * np.cos(ph), st * np.sin(ph), ct
    ys = np.stack(
        [real_spherical_harmonic(l, m, x, y, z).ravel() for l in range(4) for m in range(-l, l + 1)]
    )
    gram = (ys * w.ravel()) @ ys.T
    np.testing.assert_allclose(gram, np.eye(len(ys)), atol=1e-12)


def test_harmonic_at_origin_and_bad_degree():
    assert real_spherical_harmonic(0, 0, 0.0, 0.0, 0.0) == pytest.approx(1 / math.sqrt(4 * math.pi))
    assert real_spherical_harmonic(2, 1, 0.0, 0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="l=-1"):
        real_spherical_harmonic(-1, 0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="m=3"):
        real_spherical_harmonic(2, 3, 1.0, 0.0, 0.0)


def test_l1_representation_is_rotation_in_yzx_order():
    perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # (x, y, z) -> (y, z, x)
    for rot in cube_symmetries():
        np.testing.assert_allclose(harmonic_representation(1, rot), perm @ rot @ perm.T, atol=1e-12)
        assert harmonic_representation(0, rot) == pytest.approx(1.0)


# -------------------------------------------------------------------- basis


@pytest.mark.parametrize(
    "k, l, n_eq, n_noneq",
    [(3, 0, 4, 4), (3, 1, 3, 9), (3, 2, 3, 10), (5, 0, 10, 10), (5, 1, 9, 27), (5, 2, 9, 35)],
)
def test_weight_counts(k, l, n_eq, n_noneq):
    assert multipole_basis(k, (l,), equivariant=True).shape == (n_eq, k, k, k, 2 * l + 1)
    assert multipole_basis(k, (l,), equivariant=False).shape == (n_noneq, k, k, k, 2 * l + 1)


def test_l0_basis_is_centre_faces_edges_corners():
    basis = multipole_basis(3, (0,))[..., 0]
    offsets = np.arange(3) - 1
    gx, gy, gz = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    n_nonzero = np.abs(gx) + np.abs(gy) + np.abs(gz)
    assert basis.shape[0] == 4
    for shell, (row, count) in enumerate(zip(basis, (1, 6, 12, 8))):
        # shell s holds the voxels with s non-zero offset components, all with weight 1
        assert np.count_nonzero(row) == count
        assert np.all(n_nonzero[row != 0] == shell)
        np.testing.assert_allclose(row[row != 0], 1.0)


def test_higher_l_has_zero_centre():
    for eq in (True, False):
        basis = multipole_basis(5, (1, 2, 3), equivariant=eq)
        assert np.all(basis[:, 2, 2, 2, :] == 0)


def _reference_kernel(weights_per_l, ells, filters, k, equivariant):
    """Dense kernel (k,k,k,C_in,C_out) built voxel by voxel from the definition."""
    half = k // 2
    c_in = weights_per_l[0].shape[1]
    c_out = sum((2 * l + 1) * f for l, f in zip(ells, filters))
    kernel = np.zeros((k, k, k, c_in, c_out))
    dist2_values = sorted({a * a + b * b + c * c for a in range(-half, half + 1)
                           for b in range(-half, half + 1) for c in range(-half, half + 1)})
    offsets = [(a, b, c) for a in range(-half, half + 1) for b in range(-half, half + 1)
               for c in range(-half, half + 1)]
    channel0 = 0
    for l, f, w in zip(ells, filters, weights_per_l):
        shells = [s for s in dist2_values if l == 0 or s > 0]

        def y(m, o):
            if o == (0, 0, 0):
                return 1.0 if l == 0 else 0.0
            return math.sqrt(4 * math.pi) * _scipy_real_harmonic(l, m, *map(float, o))

        def alive(ms, s):
            return any(abs(y(m, o)) > 1e-10 for m in ms for o in offsets
                       if sum(v * v for v in o) == s)

        index = {}
        if equivariant:
            live = [s for s in shells if alive(range(-l, l + 1), s)]
            for m in range(-l, l + 1):
                for i, s in enumerate(live):
                    index[m, s] = i
        else:
            i = 0
            for m in range(-l, l + 1):
                for s in shells:
                    if alive([m], s):
                        index[m, s] = i
                        i += 1
        for o in offsets:
            s = sum(v * v for v in o)
            for m in range(-l, l + 1):
                if (m, s) not in index:
                    continue
                value = y(m, o)
                for fi in range(f):
                    ch = channel0 + (m + l) * f + fi
                    kernel[o[0] + half, o[1] + half, o[2] + half, :, ch] = value * w[index[m, s], :, fi]
        channel0 += (2 * l + 1) * f
    return kernel


@pytest.mark.parametrize("equivariant", [False, True])
@pytest.mark.parametrize("k, ells, filters", [(3, (0, 1, 2), (2, 3, 1)), (5, (1, 0), 2)])
def test_assembled_kernel_matches_voxel_reference(equivariant, k, ells, filters):
    layer = MultipoleConv3D(filters, ells=ells, kernel_size=k, equivariant=equivariant, dtype=PRECISE)
    layer.build((None, 8, 8, 8, 2))
    _randomize_weights(layer, 1)
    per_l = (filters,) * len(ells) if isinstance(filters, int) else filters
    expected = _reference_kernel([_to_numpy(w) for w in layer.radial_weights], ells, per_l, k, equivariant)
    np.testing.assert_allclose(_to_numpy(layer.assembled_kernel()), expected, rtol=RTOL, atol=RTOL)


def test_parameter_count():
    layer = MultipoleConv3D((3, 2), ells=(0, 1), kernel_size=3)
    layer.build((None, 6, 6, 6, 5))
    assert layer.count_params() == 4 * 5 * 3 + 9 * 5 * 2 + (3 + 3 * 2)
    eq = MultipoleConv3D((3, 2), ells=(0, 1), kernel_size=3, equivariant=True)
    eq.build((None, 6, 6, 6, 5))
    # equivariant: bias on the l = 0 channels only
    assert eq.count_params() == 4 * 5 * 3 + 3 * 5 * 2 + 3


def test_initial_kernel_has_conv3d_glorot_variance():
    c_in, filters = 16, 8
    layer = MultipoleConv3D(
        filters, ells=(0, 1), equivariant=True,
        kernel_initializer=keras.initializers.GlorotUniform(seed=3),
    )
    layer.build((None, 6, 6, 6, c_in))
    kernel = _to_numpy(layer.assembled_kernel())
    c_out = kernel.shape[-1]
    target = 2.0 / (27 * (c_in + c_out))
    # l = 0 block: every voxel holds one radial weight; l = 1: the centre is 0
    # and sum_m Y^2 / 3 = 1 elsewhere.
    assert np.mean(kernel[..., :filters] ** 2) / target == pytest.approx(1.0, rel=0.15)
    assert np.mean(kernel[..., filters:] ** 2) / target == pytest.approx(26 / 27, rel=0.15)


def test_seeded_initializer_gives_each_l_block_its_own_weights():
    # A seeded Keras initializer returns the same sample on every call; the l
    # blocks must still not start from copies of one another.
    layer = MultipoleConv3D(
        4, ells=(0, 1), kernel_initializer=keras.initializers.GlorotUniform(seed=1)
    )
    layer.build((None, 6, 6, 6, 3))
    w0, w1 = (_to_numpy(w) for w in layer.radial_weights)
    n = min(w0.shape[0], w1.shape[0])
    assert not np.allclose(w0[:n], w1[:n, :, : w0.shape[2]])


# ------------------------------------------------------------- convolution


def _reference_conv(x, kernel, padding, stride):
    """Direct correlation with scipy.ndimage, float64."""
    k = kernel.shape[0]
    mode = "wrap" if padding == "periodic" else "constant"
    out = np.zeros(x.shape[:4] + (kernel.shape[-1],))
    for b in range(x.shape[0]):
        for o in range(kernel.shape[-1]):
            for i in range(x.shape[-1]):
                out[b, ..., o] += ndimage.correlate(x[b, ..., i], kernel[..., i, o], mode=mode, cval=0.0)
    if padding == "valid":
        h = k // 2
        out = out[:, h:-h or None, h:-h or None, h:-h or None]
    return out[:, ::stride, ::stride, ::stride]


@pytest.mark.parametrize(
    "padding, stride, n",
    [("periodic", 1, 6), ("same", 1, 6), ("valid", 1, 7), ("periodic", 2, 7), ("same", 2, 7), ("valid", 2, 7)],
)
def test_convolution_matches_scipy_reference(padding, stride, n):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, n, n, n, 2)).astype(PRECISE)
    layer = MultipoleConv3D(2, ells=(0, 1), padding=padding, strides=stride, dtype=PRECISE)
    out = _to_numpy(layer(x))
    _randomize_weights(layer, 7)
    out = _to_numpy(layer(x))
    expected = _reference_conv(x.astype(np.float64), _to_numpy(layer.assembled_kernel()), padding, stride)
    expected = expected + _to_numpy(layer.bias)
    assert out.shape == expected.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


@pytest.mark.parametrize(
    "padding, stride, equivariant, ells, filters",
    [("periodic", 1, False, (0,), 1), ("periodic", 1, True, (0, 1), 2), ("same", 2, False, (0, 1), (2, 3)),
     ("valid", 1, True, (0, 2), (1, 2))],
)
def test_basis_responses_reproduce_the_convolution(padding, stride, equivariant, ells, filters):
    # The layer is linear in its radial weights: contracting the input's responses to each basis
    # kernel with the weights is the convolution, for the layer's weights and for weights passed in.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 7, 7, 7, 2)).astype(PRECISE)
    layer = MultipoleConv3D(filters, ells=ells, padding=padding, strides=stride, equivariant=equivariant,
                            activation="softplus", dtype=PRECISE)
    layer.build(x.shape)
    _randomize_weights(layer, 3)
    responses = layer.basis_responses(x)
    for l, r, basis_rows in zip(ells, responses, [multipole_basis(3, (l,), equivariant).shape[0] for l in ells]):
        assert tuple(r.shape[4:]) == (2, basis_rows, 2 * l + 1)
    expected = _to_numpy(layer(x))
    out = _to_numpy(layer.call_on_responses(responses))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())
    # Other weights, passed explicitly, give what the layer gives once it holds them.
    other = [rng.normal(size=w.shape).astype(PRECISE) for w in layer.radial_weights]
    bias = rng.normal(size=layer.bias.shape).astype(PRECISE)
    out = _to_numpy(layer.call_on_responses(responses, other, bias))
    for w, v in zip(layer.radial_weights, other):
        w.assign(v)
    layer.bias.assign(bias)
    expected = _to_numpy(layer(x))
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


def test_call_on_responses_checks_its_arguments():
    layer = MultipoleConv3D(1, ells=(0, 1), padding="periodic")
    x = np.zeros((1, 4, 4, 4, 1), "float32")
    layer.build(x.shape)
    responses = layer.basis_responses(x)
    with pytest.raises(ValueError, match="responses must hold one tensor per l"):
        layer.call_on_responses(responses[:1])
    with pytest.raises(ValueError, match="radial_weights must hold one tensor per l"):
        layer.call_on_responses(responses, layer.radial_weights[:1])
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, X, Y, Z, C_in\)"):
        layer.basis_responses(np.zeros((4, 4, 4), "float32"))


def test_activation_applied():
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 5, 1)).astype("float32")
    lin = MultipoleConv3D(3, ells=(0, 1), padding="periodic")
    relu = MultipoleConv3D.from_config({**lin.get_config(), "activation": "relu", "name": "r"})
    relu.build(x.shape)
    lin.build(x.shape)
    relu.set_weights(lin.get_weights())
    np.testing.assert_allclose(_to_numpy(relu(x)), np.maximum(_to_numpy(lin(x)), 0), rtol=1e-6)


# ------------------------------------------------------------- equivariance


def _layer_fn(layer):
    return lambda a: _to_numpy(layer(a))


@pytest.mark.parametrize("padding, n", [("periodic", 6), ("valid", 7), ("same", 5)])
def test_l0_invariant_under_all_48_symmetries(padding, n):
    x = np.random.default_rng(2).normal(size=(1, n, n, n, 2)).astype(PRECISE)
    layer = MultipoleConv3D(3, ells=(0,), padding=padding, equivariant=False, dtype=PRECISE)
    layer.build(x.shape)
    _randomize_weights(layer, 3)
    assert_equivariant(_layer_fn(layer), x, [(0, 3)])


@pytest.mark.parametrize("padding, n, k", [("periodic", 6, 3), ("valid", 7, 3), ("periodic", 6, 5)])
def test_equivariant_blocks_transform_like_ylm(padding, n, k):
    x = np.random.default_rng(4).normal(size=(1, n, n, n, 2)).astype(PRECISE)
    layer = MultipoleConv3D((2, 2, 1), ells=(0, 1, 2), kernel_size=k, padding=padding,
                            equivariant=True, dtype=PRECISE)
    layer.build(x.shape)
    _randomize_weights(layer, 5)
    # l = 1 rotates as a vector under the 24 rotations; reflections included too.
    assert_equivariant(_layer_fn(layer), x, [(0, 2), (1, 2), (2, 1)], cube_symmetries(proper_only=True))
    assert_equivariant(_layer_fn(layer), x, [(0, 2), (1, 2), (2, 1)])


def test_non_equivariant_mode_breaks_symmetry():
    # The check can fail: independent radial weights per m are not equivariant.
    x = np.random.default_rng(6).normal(size=(1, 6, 6, 6, 1)).astype(PRECISE)
    layer = MultipoleConv3D(2, ells=(1,), padding="periodic", equivariant=False, dtype=PRECISE)
    layer.build(x.shape)
    _randomize_weights(layer, 8)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(_layer_fn(layer), x, [(1, 2)], cube_symmetries(proper_only=True))


# ---------------------------------------------------- serialisation / export


def _small_model():
    inputs = keras.Input((6, 6, 6, 1))
    h = MultipoleConv3D((2, 1), ells=(0, 1), padding="periodic", activation="softplus",
                        kernel_regularizer=keras.regularizers.L2(1e-3))(inputs)
    h = MultipoleConv3D(2, ells=(0, 2), kernel_size=3, strides=2, padding="same", equivariant=True)(h)
    return keras.Model(inputs, h)


def test_get_config_round_trip():
    layer = MultipoleConv3D([2, 3], ells=[1, 0], kernel_size=5, strides=(1, 2, 1), padding="valid",
                            equivariant=True, use_bias=False, activation="relu",
                            kernel_initializer="he_normal", bias_initializer="ones",
                            kernel_regularizer="l2", bias_regularizer="l1", name="mp")
    config = layer.get_config()
    clone = MultipoleConv3D.from_config(config)
    assert clone.get_config() == config
    for key in ("filters", "ells", "kernel_size", "strides", "padding", "equivariant", "use_bias",
                "activation", "kernel_initializer", "bias_initializer", "kernel_regularizer",
                "bias_regularizer"):
        assert key in config
    assert config["ells"] == [1, 0] and config["filters"] == [2, 3]


def test_keras_file_round_trip(tmp_path):
    model = _small_model()
    x = np.random.default_rng(9).normal(size=(2, 6, 6, 6, 1)).astype("float32")
    expected = _to_numpy(model(x))
    path = tmp_path / "multipole.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_to_numpy(loaded(x)), expected, rtol=1e-6, atol=1e-7)
    # the kernel regulariser (one term per radial weight tensor) survives
    assert len(model.losses) == len(loaded.losses) == 2
    np.testing.assert_allclose(
        sum(_to_numpy(v) for v in loaded.losses), sum(_to_numpy(v) for v in model.losses), rtol=1e-6
    )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs the TensorFlow backend")
def test_saved_model_export(tmp_path):
    import tensorflow as tf

    model = _small_model()
    x = np.random.default_rng(10).normal(size=(2, 6, 6, 6, 1)).astype("float32")
    expected = _to_numpy(model(x))
    model.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_jax_import_does_not_load_tensorflow():
    code = "import sys, tfhalo.layers; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": -1}, "filters=-1"),
        ({"filters": 0}, "filters=0"),
        ({"filters": (2, 3), "ells": (0,)}, r"filters=\(2, 3\)"),
        ({"filters": 2, "kernel_size": 4}, "kernel_size=4"),
        ({"filters": 2, "kernel_size": 0}, "kernel_size=0"),
        ({"filters": 2, "ells": (-1,)}, r"ells=\(-1,\)"),
        ({"filters": 2, "ells": (1, 1)}, r"ells=\(1, 1\)"),
        ({"filters": 2, "ells": ()}, r"ells=\(\)"),
        ({"filters": 2, "padding": "circular"}, "padding='circular'"),
        ({"filters": 2, "strides": 0}, "strides=0"),
        ({"filters": 2, "strides": (1, -2, 1)}, r"strides=\(1, -2, 1\)"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultipoleConv3D(**kwargs)


def test_multipole_basis_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size=2"):
        multipole_basis(2, (0,))
    with pytest.raises(ValueError, match="ells"):
        multipole_basis(3, (0, -2))
