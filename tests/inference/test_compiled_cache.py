"""The cache of compiled sampler programs: reuse for the same object, never for another."""

import pytest

from tfhalo.inference.compiled_cache import CompiledCache


class _Anchor:
    pass


def _builder(log):
    def build():
        log.append(1)
        return object()
    return build


def test_the_same_key_and_object_reuse_one_value():
    cache, log, anchor = CompiledCache(size=2), [], _Anchor()
    first = cache.get(("a", id(anchor)), anchor, _builder(log))
    assert cache.get(("a", id(anchor)), anchor, _builder(log)) is first
    assert len(log) == 1 and len(cache) == 1


def test_another_object_under_the_same_key_is_built_anew():
    # A key names its object by id, which a new object may reuse: the anchor decides.
    cache, log = CompiledCache(size=2), []
    a, b = _Anchor(), _Anchor()
    first = cache.get("k", a, _builder(log))
    second = cache.get("k", b, _builder(log))
    assert second is not first and len(log) == 2
    assert cache.get("k", b, _builder(log)) is second and len(cache) == 1


def test_the_least_recently_used_entry_goes_first():
    cache, log = CompiledCache(size=2), []
    anchors = [_Anchor() for _ in range(3)]
    values = [cache.get(i, anchors[i], _builder(log)) for i in range(2)]
    assert cache.get(0, anchors[0], _builder(log)) is values[0]      # 0 is now the most recent
    cache.get(2, anchors[2], _builder(log))                            # evicts 1
    assert len(cache) == 2 and len(log) == 3
    assert cache.get(0, anchors[0], _builder(log)) is values[0]
    assert cache.get(1, anchors[1], _builder(log)) is not values[1] and len(log) == 4
    cache.clear()
    assert len(cache) == 0


def test_an_unhashable_key_builds_each_time_and_keeps_nothing():
    cache, log, anchor = CompiledCache(), [], _Anchor()
    key = ([1, 2], id(anchor))
    assert cache.get(key, anchor, _builder(log)) is not cache.get(key, anchor, _builder(log))
    assert len(log) == 2 and len(cache) == 0


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="size"):
        CompiledCache(size=0)
