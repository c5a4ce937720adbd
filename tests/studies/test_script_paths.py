"""Every script refuses an empty path argument, which would mean the current directory, before any work."""

from pathlib import Path

import pytest

from tfhalo.validation import path_argument
from tests.helpers.scripts import load_script


def _main(script: str, monkeypatch):
    return load_script(script, monkeypatch).main


@pytest.mark.parametrize("script, argv, flag", [
    ("experiments/neural_bias.py", ["--out", ""], "--out"),
    ("experiments/neural_bias.py", ["--suite", " "], "--suite"),
    ("experiments/field_level.py", ["--out", ""], "--out"),
    ("experiments/field_level.py", ["--suite", ""], "--suite"),
    ("experiments/deep_halos.py", ["--out", ""], "--out"),
    ("experiments/deep_halos.py", ["--suite", ""], "--suite"),
    ("experiments/validate_simulations.py", ["--out", ""], "--out"),
    ("experiments/write_results_doc.py", ["run", "--out", ""], "--out"),
    ("benchmarks/bias_robustness.py", ["--workdir", ""], "--workdir"),
    ("benchmarks/bias_robustness.py", ["--suites-root", ""], "--suites-root"),
    ("benchmarks/field_calibration.py", ["--workdir", ""], "--workdir"),
])
def test_an_empty_path_is_a_usage_error_and_nothing_is_written(tmp_path, monkeypatch, capsys, script, argv, flag):
    main = _main(script, monkeypatch)
    monkeypatch.chdir(tmp_path)  # where an empty path would have written
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a non-empty path, received {argv[-1]!r}" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_path_argument_keeps_a_path_and_refuses_blank_text():
    assert path_argument("runs/demo") == Path("runs/demo")
    for text in ("", "  "):
        with pytest.raises(Exception, match=f"expected a non-empty path, received {text!r}"):
            path_argument(text)


@pytest.mark.parametrize("script, flag", [
    ("experiments/neural_bias.py", "--out"),
    ("experiments/neural_bias.py", "--suite"),
    ("experiments/field_level.py", "--out"),
    ("experiments/field_level.py", "--suite"),
])
def test_a_file_where_a_directory_belongs_is_a_usage_error(tmp_path, monkeypatch, capsys, script, flag):
    main = _main(script, monkeypatch)
    (tmp_path / "file").write_text("x")
    other = "--suite" if flag == "--out" else "--out"
    code = main([flag, str(tmp_path / "file"), other, str(tmp_path / "dir")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{flag[2:]} must be a directory. Received: {flag[2:]}={str(tmp_path / 'file')!r} (a file)" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_check_run_paths_returns_paths_and_names_the_bad_one(tmp_path):
    from tfhalo.studies.common import StudyInputError, check_run_paths

    assert check_run_paths(str(tmp_path / "s"), tmp_path / "o") == (tmp_path / "s", tmp_path / "o")
    for args, match in [((None, "o"), "suite must be a non-empty directory path. Received: suite=None"),
                        (("s", " "), "out must be a non-empty directory path. Received: out=' '")]:
        with pytest.raises(StudyInputError, match=match):
            check_run_paths(*args)
