"""benchmarks/bench_forward.py: its argument checks, its variants (the same function), and its JSON summary."""

import json

import numpy as np
import pytest

from tests.helpers.scripts import load_script


@pytest.fixture()
def bench(monkeypatch):
    return load_script("benchmarks/bench_forward.py", monkeypatch)


@pytest.mark.parametrize("argv, message", [
    (["--grids", "8,9"], "--grids must be even integers >= 4. Received: [8, 9]"),
    (["--grids", "2"], "--grids must be even integers >= 4. Received: [2]"),
    (["--grids", "a"], "--grids must be comma-separated integers. Received: 'a'"),
    (["--repeats", "1"], "--repeats must be at least 2. Received: 1"),
    (["--particle-factor", "0"], "--particle-factor must be at least 1. Received: 0"),
    (["--voxel", "-1"], "--voxel must be positive. Received: -1.0"),
])
def test_bad_arguments_are_usage_errors(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_every_variant_computes_the_baselines_gradient_and_the_patches_are_undone(bench, tmp_path):
    from tfhalo.field import fft, forward

    before = fft._backend_transforms, forward.LPTForwardModel._positions_from_delta
    out = tmp_path / "forward.json"
    assert bench.main(["--grids", "4", "--repeats", "2", "--calls", "1", "--json", str(out)]) == 0
    assert (fft._backend_transforms, forward.LPTForwardModel._positions_from_delta) == before
    summary = json.loads(out.read_text())
    rows = summary["results"][0]["rows"]
    assert [r["variant"] for r in rows] == list(bench.VARIANTS)
    assert rows[-1]["max_gradient_difference"] > 1e-12  # the float32 variant really computes in float32
    for r in rows:
        # float64 variants: the same function to rounding; float32 arithmetic: to float32 rounding
        assert r["max_gradient_difference"] < (1e-5 if r["variant"].endswith("float32") else 1e-12) and r["ms"] > 0
        times = np.array(summary["results"][0]["times_ms"][r["variant"]])
        base = np.array(summary["results"][0]["times_ms"]["baseline"])
        assert r["speed_up"] == pytest.approx(base.mean() / times.mean())


def test_an_output_path_that_is_a_directory_is_a_usage_error(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--json", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"argument --json: path must not be an existing directory. Received: path='{tmp_path}'" in (
        capsys.readouterr().err)
