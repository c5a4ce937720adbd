import numpy as np
import pytest

from tfhalo.data.averaging import shell_average, shell_radii


def direct_shell_average(box, radii):
    """Voxel-by-voxel: find the smallest shell with r <= r_shell, average its members."""
    s = box.shape[0]
    c = s // 2
    shell_of = np.full(box.shape, -1)
    for idx in np.ndindex(box.shape):
        r = np.sqrt(sum((i - c) ** 2 for i in idx))
        for k, rk in enumerate(radii):
            if r <= rk:
                shell_of[idx] = k
                break
    out = np.zeros_like(box, dtype=np.float64)
    for k in range(len(radii)):
        members = shell_of == k
        if members.any():
            out[members] = box[members].mean()
    return out


@pytest.mark.parametrize("size", [9, 12])
def test_matches_direct_computation(size):
    rng = np.random.default_rng(1)
    boxes = rng.normal(size=(3, size, size, size))
    radii = shell_radii(size)
    got = shell_average(boxes)
    for b in range(3):
        np.testing.assert_allclose(got[b], direct_shell_average(boxes[b], radii), rtol=1e-12, atol=1e-12)


def test_paper_radii_and_channel_axis():
    np.testing.assert_allclose(shell_radii(75), np.linspace(2, 37.5, 20))
    boxes = np.random.default_rng(2).normal(size=(2, 11, 11, 11, 1)).astype(np.float32)
    out = shell_average(boxes)
    assert out.shape == boxes.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], shell_average(boxes[..., 0]))


def test_averaging_is_rotation_invariant_and_idempotent():
    rng = np.random.default_rng(3)
    box = rng.normal(size=(1, 11, 11, 11))
    avg = shell_average(box)
    # a 90-degree rotation maps every shell onto itself
    np.testing.assert_allclose(shell_average(np.rot90(box, axes=(1, 2)).copy()), avg, atol=1e-12)
    np.testing.assert_allclose(shell_average(avg), avg, atol=1e-12)


def test_bad_shape():
    with pytest.raises(ValueError, match="boxes must have shape"):
        shell_average(np.zeros((4, 4)))
