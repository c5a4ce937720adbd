"""benchmarks/bench_field.py: its argument checks, and one smoke run of its blocked-sampler path."""

import json
import re

import numpy as np
import pytest

from tests.helpers.scripts import load_script


@pytest.fixture()
def bench(monkeypatch):
    return load_script("benchmarks/bench_field.py", monkeypatch)


# The gibbs variant builds the field_level study's config; its limits are checked with the others, before the
# bias fit, and named by this script's flags.
@pytest.mark.parametrize("argv, message", [
    (["--variants", "gibbs", "--samples", "6"], "samples must be at least 20. Received: samples=6"),
    (["--variants", "gibbs", "--bias-kernel", "mala"], "bias_kernel must be one of .* Received: bias_kernel='mala'"),
    (["--variants", "gibbs,gibbs"], "variants must be distinct"),
])
def test_bad_arguments_are_usage_errors_before_any_work(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--skip-timing", *argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err)
    assert "machine:" not in captured.out


def test_the_blocked_variant_runs_and_counts_the_field_gradients(bench, tmp_path):
    out = tmp_path / "bench.json"
    warmup, samples, leapfrog = 0, 20, 3
    bench.main(["--quick", "--skip-timing", "--variants", "gibbs", "--warmup", str(warmup), "--samples",
                str(samples), "--leapfrog-steps", str(leapfrog), "--map-field-steps", "2", "--fit-steps", "5",
                "--bias-kernel", "hmc", "--bias-steps", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["sampling"]["joint"]
    assert row["variant"] == "gibbs" and result["settings"]["bias_kernel"] == "hmc"
    # Per chain and sweep: the gradient at the refreshed start and one per leapfrog step of the field block.
    assert row["n_gradients"] == (warmup + samples) * (leapfrog + 1) * result["n_chains"]
    assert row["setup_gradients"] == 2 * result["settings"]["n_probes"] * result["n_chains"]  # the curvature probes
    assert np.isfinite(row["step_size"]) and row["step_size"] > 0 and 0.0 <= row["acceptance"] <= 1.0
    assert row["ess_power"] > 0 and row["ess_bias"] > 0
    assert row["gradients_per_ess_power"] == pytest.approx(row["n_gradients"] / row["ess_power"])
