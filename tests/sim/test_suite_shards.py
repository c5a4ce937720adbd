"""Sharded suite generation: parts in any order or concurrently give the unsharded suite, byte for byte."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfhalo
import tfhalo.sim.suite as suite
from tfhalo.sim.suite import generate_suite, list_suite, parse_shard, shard_indices, simulation_seeds

TINY = dict(n_side=16, box_size=20.0, n_steps=2)
N_SIMS, SEED = 5, 21


def digest(root: Path) -> dict:
    """sha256 of every file under ``root`` by relative path (directories appear through their files)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("unsharded") / "suite"
    paths = generate_suite(out, "quick", n_sims=N_SIMS, seed=SEED, progress=False, **TINY)
    return out, paths, digest(out)


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/4", (3, 4)), ("12/100", (12, 100)),
                                            ((1, 2), (1, 2)), ([0, 3], (0, 3)),
                                            ((np.int64(2), np.int32(5)), (2, 5)), (None, None)])
def test_parse_shard_accepts(text, expected):
    parsed = parse_shard(text)
    assert parsed == expected
    assert parsed is None or all(type(v) is int for v in parsed)


@pytest.mark.parametrize("shard", ["3/2", "2/2", "1/0", "-1/2", "+1/2", " 1/2", "1/2 ", "1 / 2", "1/", "/2", "1",
                                   "a/b", "1.0/2", "1/2/3", "١/٢", "", (2, 2), (1,), (1, 2, 3), (True, 2),
                                   (1.0, 2), ("1", "2"), 1, 0.5])
def test_parse_shard_refuses(shard):
    with pytest.raises(ValueError) as err:
        parse_shard(shard)
    assert str(err.value) == f"shard must be 'i/N' with 0 <= i < N. Received: shard={shard!r}"


def test_shards_partition_the_suite():
    for n_sims in (1, 5, 7):
        for n in (1, 2, 3, 8):
            parts = [shard_indices(n_sims, (i, n)) for i in range(n)]
            assert sorted(j for part in parts for j in part) == list(range(n_sims))  # disjoint and complete
            assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
            assert all(part == sorted(part) and all(j % n == i for j in part) for i, part in enumerate(parts))
    assert shard_indices(3, None) == [0, 1, 2]


def test_bad_shard_is_refused_before_any_work(tmp_path):
    out = tmp_path / "suite"
    with pytest.raises(ValueError, match=r"shard must be 'i/N' with 0 <= i < N. Received: shard='3/2'"):
        generate_suite(out, "quick", n_sims=2, seed=0, progress=False, shard="3/2", **TINY)
    assert not out.exists()


def test_shards_in_any_order_give_the_unsharded_suite(tmp_path, reference):
    ref_out, ref_paths, ref_digest = reference
    out = tmp_path / "suite"
    done = set()
    for shard in ("2/3", "0/3", "1/3"):
        i, n = parse_shard(shard)
        paths = generate_suite(out, "quick", n_sims=N_SIMS, seed=SEED, progress=False, shard=shard, **TINY)
        assert [p.name for p in paths] == [ref_paths[j].name for j in range(i, N_SIMS, n)]
        done.update(range(i, N_SIMS, n))
        # In between, the manifest already lists the whole suite and list_suite the finished part.
        manifest = json.loads((out / "suite.json").read_text())
        assert manifest["n_sims"] == N_SIMS
        assert [e["seed"] for e in manifest["simulations"]] == simulation_seeds(SEED, N_SIMS)
        assert list_suite(out) == [out / ref_paths[j].name for j in sorted(done)]
    assert digest(out) == ref_digest  # every file, suite.json included, byte for byte
    # A finished shard is skipped when its task is rerun (e.g. a requeued array task).
    mtime = os.stat(out / "sim_001.h5").st_mtime_ns
    generate_suite(out, "quick", n_sims=N_SIMS, seed=SEED, progress=False, shard="1/3", **TINY)
    assert os.stat(out / "sim_001.h5").st_mtime_ns == mtime


def test_empty_shard_writes_only_the_manifest(tmp_path, reference):
    out = tmp_path / "suite"
    assert generate_suite(out, "quick", n_sims=2, seed=SEED, progress=False, shard=(3, 4), **TINY) == []
    assert sorted(p.name for p in out.iterdir()) == ["suite.json"]
    assert list_suite(out) == []


def test_two_shards_in_parallel_processes(tmp_path, reference):
    _, _, ref_digest = reference
    out = tmp_path / "suite"
    env = dict(os.environ, PYTHONPATH=str(Path(tfhalo.__file__).parents[1]))
    argv = [sys.executable, "-m", "tfhalo.cli", "simulate", "--n-sims", str(N_SIMS), "--seed", str(SEED),
            "--out", str(out), "--n-side", "16", "--box-size", "20", "--n-steps", "2", "--no-progress"]
    procs = [subprocess.Popen([*argv, "--shard", f"{i}/2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    assert [r[0].strip() for r in results] == [f"2 simulations (shard 1/2 of {N_SIMS}) in {out}",
                                               f"3 simulations (shard 0/2 of {N_SIMS}) in {out}"]
    assert digest(out) == ref_digest
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no temporary file left


def _shrink(out: Path, n_sims: int) -> None:
    """What a concurrent run with a smaller ``n_sims`` writes when it read the manifest before it grew."""
    manifest = suite._manifest("quick", suite.resolve_preset("quick", **TINY), SEED, n_sims)
    (out / "suite.json").write_text(json.dumps(manifest, indent=2))


def test_a_concurrent_smaller_manifest_is_merged_back(tmp_path, reference, monkeypatch):
    _, _, ref_digest = reference
    out = tmp_path / "suite"
    real_write = suite.write_json_atomic
    writes = []

    def write_then_clobbered(path, payload, **kwargs):
        result = real_write(path, payload, **kwargs)
        writes.append(payload["n_sims"])
        if len(writes) == 1:  # a smaller run's rename lands right after this one's
            _shrink(out, 2)
        return result

    monkeypatch.setattr(suite, "write_json_atomic", write_then_clobbered)
    real_files = suite.write_simulation_files

    def files_then_clobbered(sim, out_dir, name):
        result = real_files(sim, out_dir, name)
        if name == "sim_004":  # and again while this run works
            _shrink(out, 3)
        return result

    monkeypatch.setattr(suite, "write_simulation_files", files_then_clobbered)
    generate_suite(out, "quick", n_sims=N_SIMS, seed=SEED, progress=False, **TINY)
    assert writes == [N_SIMS, N_SIMS, N_SIMS]  # written, re-read and rewritten, rewritten at the end
    assert digest(out) == ref_digest


def test_a_smaller_or_equal_run_never_rewrites_the_manifest(tmp_path, reference):
    out = tmp_path / "suite"
    generate_suite(out, "quick", n_sims=3, seed=SEED, progress=False, shard="2/3", **TINY)
    before = (out / "suite.json").read_bytes()
    mtime = os.stat(out / "suite.json").st_mtime_ns
    generate_suite(out, "quick", n_sims=2, seed=SEED, progress=False, shard="0/2", **TINY)
    generate_suite(out, "quick", n_sims=3, seed=SEED, progress=False, shard="1/3", **TINY)
    assert (out / "suite.json").read_bytes() == before and os.stat(out / "suite.json").st_mtime_ns == mtime
    # Growing keeps the existing simulations and their seeds.
    generate_suite(out, "quick", n_sims=N_SIMS, seed=SEED, progress=False, shard="1/2", **TINY)
    assert json.loads((out / "suite.json").read_text())["n_sims"] == N_SIMS
    assert [p.name for p in list_suite(out)] == ["sim_000.h5", "sim_001.h5", "sim_002.h5", "sim_003.h5"]


def test_a_shard_of_another_suite_is_refused(tmp_path):
    out = tmp_path / "suite"
    generate_suite(out, "quick", n_sims=2, seed=1, progress=False, shard="0/2", **TINY)
    before = digest(out)
    with pytest.raises(ValueError, match="another suite"):
        generate_suite(out, "quick", n_sims=2, seed=2, progress=False, shard="1/2", **TINY)
    assert digest(out) == before
