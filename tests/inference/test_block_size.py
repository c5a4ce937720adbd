"""block_size_for: one block length for every phase of a run."""

import math

import pytest

from tfhalo.inference import block_size_for


@pytest.mark.parametrize("lengths", [(150, 600), (75, 75), (300, 300), (0, 500), (200, 1000), (64, 96), (97,)])
def test_block_size_divides_every_phase_and_is_the_largest_that_does(lengths):
    size = block_size_for(*lengths, largest=100, smallest=10)
    positive = [n for n in lengths if n > 0]
    assert 10 <= size <= 100
    assert all(n % size == 0 for n in positive)
    assert not any(all(n % d == 0 for n in positive) for d in range(size + 1, 101))


def test_block_size_falls_back_when_no_common_length_is_long_enough():
    assert math.gcd(75, 101) == 1
    assert block_size_for(75, 101, default=50) == 50
    assert block_size_for(7, 14, smallest=10, default=33) == 33
    assert block_size_for(7, 14, smallest=7) == 7


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=(0, 0)), "lengths=\\[0, 0\\]"),
    (dict(lengths=(-5, 10)), "lengths=-5"),
    (dict(lengths=(10,), largest=0), "largest=0"),
    (dict(lengths=(10,), largest=5, smallest=6), "smallest=6"),
    (dict(lengths=(10,), default=0), "default=0"),
])
def test_block_size_refuses_bad_arguments(kwargs, match):
    lengths = kwargs.pop("lengths")
    with pytest.raises(ValueError, match=match):
        block_size_for(*lengths, **kwargs)
