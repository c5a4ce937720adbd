"""docs/results.md rendering from synthetic results.json files (no study is run)."""

import json
import math
from pathlib import Path

import pytest

from tfhalo.studies.results_doc import format_measurement, load_results, render_results_doc, write_results_doc
from tests.helpers.scripts import load_script

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))  # content is copied byte for byte, never decoded


def _write_run(run_dir: Path, summary, **extra) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summary, "config": {"preset": "quick", "n_grid": 10, "threshold": [50, "particles"]},
               "seed": 3, "machine": "Linux x86_64, 2 cores", "date": "2030-01-02T03:04:05Z", **extra}
    (run_dir / "results.json").write_text(json.dumps(payload))  # NaN / Infinity literals, as json.dump writes them
    return run_dir


ROWS = [
    {"quantity": "held-out ln L, neural - Neyrinck", "value": 58.2431, "error": 3.1234,
     "error_kind": "standard error", "paper": None, "note": "per halo | 244 halos"},
    {"quantity": "Pearson r (z0)", "value": 0.95213, "error": [0.94811, 0.95534],
     "error_kind": "68% bootstrap", "paper": 0.96, "note": ""},
    {"quantity": "max split R-hat", "value": 1.0025, "error": None, "error_kind": None, "paper": None, "note": ""},
]


def _load_cli():
    return load_script("experiments/write_results_doc.py")


def test_rows_render_with_their_uncertainty_kind_and_metadata(tmp_path):
    run = _write_run(tmp_path / "runs" / "neural_bias", ROWS)
    text = render_results_doc([run], out_dir=tmp_path / "docs")
    assert "## Neural bias model (Charnock et al. 2020, arXiv:1909.06379)" in text
    # the value is shown to the decimal place of the error's second significant figure
    assert "| held-out ln L, neural - Neyrinck | 58.2 ± 3.1 (standard error) | — | per halo \\| 244 halos |" in text
    # an interval is shown to two significant figures of its half-width
    assert "| Pearson r (z0) | 0.9521 [0.9481, 0.9553] (68% bootstrap) | 0.96 |  |" in text
    assert "| max split R-hat | 1.0025 | — |  |" in text
    assert "* seed: 3" in text and "* machine: Linux x86_64, 2 cores" in text
    assert "* date: 2030-01-02T03:04:05Z" in text
    assert "| n_grid | 10 |" in text and '| threshold | `[50, "particles"]` |' in text
    # every table row has the header's number of columns (escaped pipes do not count)
    lines = text.splitlines()
    start = lines.index("| quantity | value | paper | note |")
    table = lines[start:start + 2 + len(ROWS)]
    assert lines[start + 2 + len(ROWS)] == ""
    for line in table:
        assert line.replace("\\|", "").count("|") == 5, line


def test_format_measurement_rounds_to_the_error():
    assert format_measurement(0.123456, 0.0123) == "0.123 ± 0.012"
    assert format_measurement(1234.4, 87.0, "MCSE") == "1234 ± 87 (MCSE)"
    assert format_measurement(7, None) == "7"
    assert format_measurement(2.5, 0.0) == "2.5 ± 0"


def test_non_finite_numbers_are_written_out_not_hidden(tmp_path):
    rows = [
        {"quantity": "a", "value": math.nan, "error": 0.1, "error_kind": "standard error", "paper": None, "note": ""},
        {"quantity": "b", "value": 1.5, "error": math.inf, "error_kind": "standard error", "paper": None, "note": ""},
        {"quantity": "c", "value": -math.inf, "error": [math.nan, 2.0], "error_kind": "68% bootstrap",
         "paper": math.nan, "note": ""},
        {"quantity": "d", "value": None, "error": None, "error_kind": None, "paper": None, "note": "not computed"},
        {"quantity": "e", "value": 0.5, "error": [None, 0.75], "error_kind": "68% bootstrap", "paper": None,
         "note": ""},
    ]
    text = render_results_doc([_write_run(tmp_path / "study", rows)], out_dir=tmp_path)
    assert "| a | nan ± 0.10 (standard error) |" in text
    assert "| b | 1.5 ± inf (standard error) |" in text
    assert "| c | -inf [nan, 2] (68% bootstrap) | nan |" in text
    assert "| d | n/a | — | not computed |" in text
    assert "| e | 0.5 [n/a, 0.75] (68% bootstrap) |" in text


def test_missing_results_file_names_the_path_and_writes_nothing(tmp_path):
    good = _write_run(tmp_path / "deep_halos", ROWS)
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    out.write_text("old document\n")
    missing = tmp_path / "neural_bias"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match=str(missing / "results.json")):
        write_results_doc([good, missing], out=out)
    assert out.read_text() == "old document\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.md"]  # no temporary file, no figures


def test_malformed_rows_are_refused_naming_file_and_row(tmp_path):
    bad = _write_run(tmp_path / "s", [ROWS[0], {"quantity": "x", "value": "0.9", "error": None}])
    with pytest.raises(ValueError, match=r"results.json: summary\[1\]\.value must be a number"):
        load_results(bad)
    no_summary = tmp_path / "t"
    no_summary.mkdir()
    (no_summary / "results.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="has no 'summary'"):
        load_results(no_summary / "results.json")
    with pytest.raises(ValueError, match="runs must name at least one"):
        write_results_doc([], out=tmp_path / "r.md")


def test_out_may_not_overwrite_an_input(tmp_path):
    run = _write_run(tmp_path / "s", ROWS)
    before = (run / "results.json").read_bytes()
    with pytest.raises(ValueError, match="out must not be one of the input files"):
        write_results_doc([run], out=run / "results.json")
    assert (run / "results.json").read_bytes() == before


def test_figures_are_copied_beside_the_document_and_linked(tmp_path):
    run = _write_run(tmp_path / "runs" / "deep_halos", ROWS)
    (run / "figures").mkdir()
    (run / "figures" / "training.png").write_bytes(PNG)
    (run / "fig2_mass_function.png").write_bytes(PNG[::-1])
    out = tmp_path / "docs" / "results.md"
    write_results_doc([run], out=out)
    text = out.read_text()
    links = [line[line.index("](") + 2:-1] for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 2
    for link in links:
        copied = out.parent / link
        assert copied.is_file() and not link.startswith("..")  # inside docs/, not pointing into runs/
    assert sorted(Path(link).as_posix() for link in links) == [
        "figures/deep_halos/fig2_mass_function.png", "figures/deep_halos/training.png"]
    assert (out.parent / "figures/deep_halos/training.png").read_bytes() == PNG
    assert (out.parent / "figures/deep_halos/fig2_mass_function.png").read_bytes() == PNG[::-1]
    # linked in place when not copied
    write_results_doc([run], out=out, copy_figures=False)
    assert "](../runs/deep_halos/figures/training.png)" in out.read_text()


def test_robustness_table_and_tally(tmp_path):
    rows = [
        {"catalogue": 0, "seed": 0, "max_rhat": 1.004, "min_ess_bulk": 812.0, "min_ess_tail": 640.0,
         "n_divergent": 0, "seconds": 301.5, "converged": True, "blas": "Haswell"},
        {"catalogue": 1, "seed": 0, "max_rhat": 1.02, "min_ess_bulk": 210.0, "min_ess_tail": math.nan,
         "n_divergent": 3, "seconds": 290.0, "converged": False, "blas": "default"},
    ]
    table = tmp_path / "robustness.json"
    table.write_text(json.dumps({"robustness": rows, "machine": "test box"}))
    run = _write_run(tmp_path / "neural_bias", ROWS)
    text = render_results_doc([run], robustness=table, out_dir=tmp_path)
    assert ("| catalogue | seed | max_rhat | min_ess_bulk | min_ess_tail | n_divergent | seconds | converged | blas |"
            in text)
    assert "| 0 | 0 | 1.004 | 812 | 640 | 0 | 301.5 | yes | Haswell |" in text
    assert "| 1 | 0 | 1.02 | 210 | nan | 3 | 290 | no | default |" in text
    assert "* blas = Haswell: 1 of 1 runs converged, 1 without divergences (divergent transitions: 0)." in text
    assert "* blas = default: 0 of 1 runs converged, 0 without divergences (divergent transitions: 3)." in text
    # the same rows inside a results.json get their own section of that study
    _write_run(tmp_path / "nb2", ROWS, robustness=rows)
    assert "### Robustness" in render_results_doc([tmp_path / "nb2"], out_dir=tmp_path)


def test_robustness_file_in_the_benchmark_layout(tmp_path):
    # benchmarks/bias_robustness.py writes {"runs": [...], "machine": ...}, rows keyed "sampler_seed",
    # each with its config (nested: left out of the table) and machine (shared: said once).
    rows = [{"catalogue": c, "sampler_seed": s, "blas": "inherited", "max_rhat": 1.003, "min_ess_bulk": 900.0,
             "min_ess_tail": 700.0, "n_divergent": int(c == 2 and s == 4), "converged": not (c == 2 and s == 4),
             "seconds": 250.0, "config": {"n_grid": 10}, "machine": "cpu X"} for c in range(3) for s in range(5)]
    table = tmp_path / "results.json"
    table.write_text(json.dumps({"runs": rows, "overrides": {}, "machine": "cpu X"}))
    text = render_results_doc([_write_run(tmp_path / "nb", ROWS)], robustness=table, out_dir=tmp_path)
    section = text[text.index("## Convergence across"):]
    header = "| catalogue | seed | max_rhat | min_ess_bulk | min_ess_tail | n_divergent | seconds | converged | blas |"
    assert header in section
    assert "| 2 | 4 | 1.003 | 900 | 700 | 1 | 250 | no | inherited |" in section
    assert sum(line.startswith("| ") for line in section.splitlines()) == 1 + 15
    assert "n_grid" not in section and "Machine: cpu X." in section
    assert "14 of 15 runs converged, 14 without divergences (divergent transitions: 1)." in section


def test_several_robustness_files_get_one_table_each_titled_by_their_settings(tmp_path):
    row = {"catalogue": 0, "sampler_seed": 0, "blas": "inherited", "max_rhat": 1.003, "min_ess_bulk": 900.0,
           "min_ess_tail": 700.0, "n_divergent": 0, "converged": True, "seconds": 250.0}
    nuts, hmc = tmp_path / "nuts" / "results.json", tmp_path / "hmc" / "results.json"
    for path, overrides, rhat in ((nuts, {"kernel": "nuts", "target_accept": 0.99}, 1.003),
                                  (hmc, {"kernel": "hmc", "leapfrog_steps": 60}, 1.091)):
        path.parent.mkdir()
        path.write_text(json.dumps({"runs": [dict(row, max_rhat=rhat, converged=rhat < 1.01)],
                                    "overrides": overrides, "machine": "cpu X"}))
    text = render_results_doc([_write_run(tmp_path / "nb", ROWS)], robustness=[nuts, hmc], out_dir=tmp_path)
    section = text[text.index("## Convergence across"):]
    assert section.count("## Convergence across") == 1
    first, second = section.index("### kernel=nuts, target_accept=0.99"), section.index("### kernel=hmc, leapfrog_steps=60")
    assert first < section.index("| 0 | 0 | 1.003 |") < second < section.index("| 0 | 0 | 1.091 |")
    # The kernel a preset chose (in each row's config) titles the table as a flag would.
    hmc.write_text(json.dumps({"runs": [dict(row, config={"kernel": "hmc"})], "overrides": {"leapfrog_steps": 60}}))
    assert "### kernel=hmc, leapfrog_steps=60" in render_results_doc([tmp_path / "nb"], robustness=[nuts, hmc],
                                                                     out_dir=tmp_path)
    # The rows' config completes the title; the length setting the kernel ignores is left out.
    nuts.write_text(json.dumps({"runs": [dict(row, config={"kernel": "nuts", "max_tree_depth": 7, "n_samples": 600,
                                                           "leapfrog_steps": 16})], "overrides": {}}))
    assert "### kernel=nuts, max_tree_depth=7, n_samples=600\n" in render_results_doc(
        [tmp_path / "nb"], robustness=[nuts, hmc], out_dir=tmp_path)
    # Chain groups name the table when there are several (one batch is the default), with their warm-up:
    # pooled, or one per group (rows written before the pooled warm-up existed say nothing: one per group).
    for extra, title in (({"chain_groups": 1, "pool_warmup": True}, "### kernel=nuts, max_tree_depth=7\n"),
                         ({"chain_groups": 2}, "### chain_groups=2, kernel=nuts, max_tree_depth=7, pool_warmup=False\n"),
                         ({"chain_groups": 2, "pool_warmup": True},
                          "### chain_groups=2, kernel=nuts, max_tree_depth=7, pool_warmup=True\n")):
        nuts.write_text(json.dumps({"runs": [dict(row, config={"kernel": "nuts", "max_tree_depth": 7, **extra})],
                                    "overrides": {}}))
        assert title in render_results_doc([tmp_path / "nb"], robustness=[nuts, hmc], out_dir=tmp_path)
    # A partial table (the benchmark rewrites its file as runs finish) says so.
    hmc.write_text(json.dumps({"runs": [row], "overrides": {"kernel": "hmc"}, "planned": 17, "complete": False}))
    assert "* runs finished: 1 of the 17 planned (partial table" in render_results_doc(
        [tmp_path / "nb"], robustness=[hmc], out_dir=tmp_path)
    # One file keeps the single-table layout; a bad list is named.
    assert "### kernel" not in render_results_doc([tmp_path / "nb"], robustness=[nuts], out_dir=tmp_path)
    with pytest.raises(ValueError, match="robustness must be a path or a list of paths"):
        render_results_doc([tmp_path / "nb"], robustness=3, out_dir=tmp_path)


def test_cli_writes_the_document_and_reports_bad_input_as_usage_error(tmp_path, capsys):
    cli = _load_cli()
    run = _write_run(tmp_path / "neural_bias", ROWS)
    out = tmp_path / "results.md"
    assert cli.main([str(run), "--out", str(out)]) == 0
    assert "58.2 ± 3.1" in out.read_text()
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "other.md")])
    assert exc.value.code == 2
    assert f"results file not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert not (tmp_path / "other.md").exists()
