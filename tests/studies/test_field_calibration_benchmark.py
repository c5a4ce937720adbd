"""benchmarks/field_calibration.py: its rows and table from a study's results, and its argument checks."""

import pytest

from tests.helpers.scripts import load_script


@pytest.fixture()
def bench(monkeypatch):
    return load_script("benchmarks/field_calibration.py", monkeypatch)


def _result(z68, z95, calibrated):
    return {"n_halos": 12, "calibrated": calibrated,
            "coverage": {"levels": {"0.68": {"z": z68}, "0.95": {"z": z95}}},
            "cross_correlation": {"r_largest_scale": 0.95, "k_r_half": None},
            "power": {"consistent_with_prior": True},
            "convergence": {"max_rhat": 1.02, "min_ess_bulk": 80.0, "min_ess_tail": 90.0},
            "sampler": {"n_divergent": 0, "seconds": 3.0}}


def test_rows_take_the_largest_absolute_z_and_the_table_counts_calibrated_seeds(bench):
    rows = [bench.seed_row(0, "mock_fixed_bias", _result([0.5, -2.5], [1.0, 0.2], True)),
            bench.seed_row(1, "mock_fixed_bias", _result([0.1, 0.3], [-3.4, 0.0], False))]
    assert rows[0]["max_abs_z_68"] == 2.5 and rows[0]["max_abs_z_95"] == 1.0
    assert rows[1]["max_abs_z_95"] == 3.4 and rows[1]["calibrated"] is False
    text = bench.table(rows)
    assert "mock_fixed_bias: 1 of 2 seeds calibrated." in text
    assert "| 1 | mock_fixed_bias | 12 | 0.30 | 3.40 | no | 3.40 | 0.950 | n/a |" in text


def test_rows_judge_against_the_exact_samplers_expectation_where_results_hold_it(bench):
    result = _result([0.5, -4.0], [1.0, 0.2], True)
    result["coverage"]["levels"]["0.68"]["z_expected"] = [0.4, -1.5]
    result["coverage"]["levels"]["0.95"]["z_expected"] = [2.1, 0.1]
    row = bench.seed_row(0, "mock", result)
    assert row["max_abs_z_68"] == 1.5 and row["max_abs_z_95"] == 2.1 and row["max_abs_z_nominal"] == 4.0
    assert "| 0 | mock | 12 | 1.50 | 2.10 | yes | 4.00 | 0.950 |" in bench.table([row])


@pytest.mark.parametrize("argv, match", [
    (["--seeds", "1", "1"], "seeds must be distinct"),
    (["--seeds", "-1"], "seeds must be at least 0. Received: seeds=-1"),
    (["--settings", "truth"], "settings must be one of .* Received: settings='truth'"),
    (["--preset", "huge"], "huge"),
])
def test_bad_arguments_exit_2_before_anything_is_written(bench, tmp_path, capsys, argv, match):
    assert bench.main(argv + ["--workdir", str(tmp_path / "w")]) == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "w").exists()


def test_the_study_flags_override_every_seed_and_are_recorded(bench, tmp_path, monkeypatch):
    import json

    seen = []

    def fake_run(config, suite, out, progress=True):
        seen.append(config)
        return {"config": config.to_dict(), "settings": {"mock": _result([0.1], [0.2], True)}}

    monkeypatch.setattr(bench.field_level, "run", fake_run)
    argv = ["--seeds", "1", "2", "--settings", "mock", "--threshold-mass", "5e11", "--sampler", "gibbs",
            "--bias-kernel", "hmc", "--bias-steps", "5", "--workdir", str(tmp_path / "w"), "--no-progress"]
    assert bench.main(argv) == 0
    assert [(c.seed, c.chains_seed, c.threshold_mass, c.sampler, c.bias_kernel, c.bias_steps) for c in seen] == [
        (1, 1, 5e11, "gibbs", "hmc", 5), (2, 2, 5e11, "gibbs", "hmc", 5)]
    saved = json.loads((tmp_path / "w" / "results.json").read_text())
    assert saved["overrides"]["threshold_mass"] == 5e11 and saved["overrides"]["bias_steps"] == 5
    assert saved["rows"][1]["config"]["bias_kernel"] == "hmc" and saved["complete"]


def test_a_bad_study_flag_exits_2_before_anything_is_written(bench, tmp_path, capsys):
    assert bench.main(["--seeds", "0", "--bias-kernel", "gradient", "--workdir", str(tmp_path / "w")]) == 2
    assert "bias_kernel" in capsys.readouterr().err and not (tmp_path / "w").exists()
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--sampler-seed", "3"])
