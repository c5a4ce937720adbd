"""The simulation-engine validation as a library study: config checks, the mass-function comparison, a tiny run."""

import json
import math

import numpy as np
import pytest

from tfhalo.studies import validate_simulations as vs


@pytest.mark.parametrize("field, value", [
    ("n_sims", 0), ("n_side", 2.5), ("n_steps", -1), ("mesh_factor", 0), ("box_size", -1.0),
    ("box_size", float("nan")), ("seed", -3), ("name", ""),
])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        vs.Config(**{field: value})


def test_presets_and_overrides():
    cfg = vs.Config.preset("quick", seed=3, n_sims=1)
    assert (cfg.name, cfg.seed, cfg.n_sims, cfg.n_side) == ("quick", 3, 1, 32)
    assert vs.Config.preset("default").to_dict() == {**vs.PRESETS["default"], "name": "default", "seed": 0}
    with pytest.raises(ValueError, match="preset"):
        vs.Config.preset("huge")
    with pytest.raises(ValueError, match="n_particles"):
        vs.Config.preset("quick", n_particles=3)


def test_mass_function_matches_direct_counts_and_quadrature():
    from colossus.lss import mass_function
    from scipy.integrate import quad

    from tfhalo.sim.cosmology import WMAP5

    rng = np.random.default_rng(0)
    particle_mass, volume = 8e10, 2 * 50.0**3
    masses = 10 ** rng.uniform(np.log10(15 * particle_mass), 14.2, size=300)
    hmf = vs.mass_function_comparison(masses, particle_mass, volume, bins_per_dex=4)
    edges = np.asarray(hmf["log10_mass_edges"])
    assert edges[0] == pytest.approx(np.log10(vs.MIN_PARTICLES * particle_mass))
    assert np.allclose(np.diff(edges), 0.25) and edges[-1] > np.log10(masses.max())
    assert hmf["counts"] == np.histogram(np.log10(masses), bins=edges)[0].tolist()
    assert sum(hmf["counts"]) == int(np.sum(masses >= 10 ** edges[0]))
    # Expected counts: adaptive quadrature of colossus' dn/dlnM over ln M, float64.
    WMAP5.to_colossus()
    f = lambda lnm: float(mass_function.massFunction(math.exp(lnm), 0.0, mdef="fof", model="watson13",
                                                      q_out="dndlnM"))
    ref = [volume * quad(f, lo * math.log(10), hi * math.log(10), epsrel=1e-10)[0]
           for lo, hi in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(hmf["expected_watson13"], ref, rtol=2e-3)
    counts, expected = np.asarray(hmf["counts"]), np.asarray(ref)
    np.testing.assert_allclose(hmf["ratio"], counts / expected, rtol=2e-3)
    np.testing.assert_allclose(hmf["ratio_poisson_error"], np.sqrt(counts) / expected, rtol=2e-3)
    np.testing.assert_allclose(hmf["dndlnm"], counts / volume / (0.25 * math.log(10)))


@pytest.mark.parametrize("masses", [[], [1e12, np.nan], [1e12, -1e12]])
def test_mass_function_refuses_bad_masses(masses):
    with pytest.raises(ValueError, match="masses"):
        vs.mass_function_comparison(masses, 1e10, 1e5)


def test_run_writes_summary_and_figure_and_resumes(tmp_path):
    cfg = vs.Config.preset("quick", seed=0, n_sims=1)
    suite, out = tmp_path / "suite", tmp_path / "out"
    summary = vs.run(cfg, suite=suite, out=out, progress=False)
    assert json.loads((out / "validate_simulations.json").read_text())["mass_function"] == summary["mass_function"]
    assert (out / "validate_simulations.png").stat().st_size > 0
    assert summary["config"]["seeds"] == [json.loads((suite / "suite.json").read_text())["simulations"][0]["seed"]]
    # The initial field follows colossus' P(k): one 32^3 field has ~1,000 modes below half the
    # Nyquist wavenumber, so the mode-weighted mean ratio is 1 within ~4% (1 sigma).
    assert abs(summary["initial_power"]["mode_weighted_mean_ratio_below_half_nyquist"] - 1.0) < 0.15
    assert sum(summary["mass_function"]["counts"]) > 0
    assert not list(tmp_path.rglob("*.tmp*"))
    # A rerun reads the cached simulation and statistics back: same numbers, nothing regenerated.
    stamp = {p: p.stat().st_mtime_ns for p in (suite / "sim_000.h5", *out.glob("stats/*.npz"))}
    again = vs.run(cfg, suite=suite, out=out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert again["mass_function"] == summary["mass_function"]
    assert again["initial_power"] == summary["initial_power"]


def test_run_refuses_a_suite_of_other_settings_before_writing(tmp_path):
    suite, out = tmp_path / "suite", tmp_path / "out"
    vs.run(vs.Config.preset("quick", n_sims=1), suite=suite, out=out, progress=False)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="suite|parameters|seed"):
        vs.run(vs.Config.preset("quick", n_sims=1, n_steps=5), suite=suite, out=tmp_path / "other", progress=False)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_statistics_of_another_suite_in_the_same_out_are_not_reused(tmp_path):
    out = tmp_path / "out"
    first = vs.run(vs.Config.preset("quick", n_sims=1), suite=tmp_path / "a", out=out, progress=False)
    second = vs.run(vs.Config.preset("quick", n_sims=1, n_steps=5), suite=tmp_path / "b", out=out, progress=False)
    assert len(list((out / "stats").glob("*.npz"))) == 2
    # the same seed and initial field, but the z = 0 field of 5 PM steps is not that of 10
    assert second["initial_power"]["pk_measured_mean"] == first["initial_power"]["pk_measured_mean"]
    assert second["final_power"]["pk_measured_mean"] != first["final_power"]["pk_measured_mean"]


@pytest.mark.parametrize("kwargs, name", [
    (dict(suite="", out="o"), "suite"), (dict(suite="s", out=""), "out"),
])
def test_run_refuses_empty_paths(tmp_path, monkeypatch, kwargs, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=name):
        vs.run(vs.Config.preset("quick", n_sims=1), progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_script_reports_bad_arguments_with_exit_code_2_before_writing(tmp_path, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("validate_simulations_script", root / "experiments/validate_simulations.py")
    module = importlib.util.module_from_spec(spec)

    def call(step, *args):
        sys.modules[spec.name] = module  # dataclasses look their module up there
        try:
            return step(*args)
        finally:
            sys.modules.pop(spec.name, None)

    call(spec.loader.exec_module, module)
    assert call(module.main, ["--n-sims", "0", "--out", str(tmp_path / "out")]) == 2
    assert "n_sims must be at least 1. Received: n_sims=0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # --quick with another preset is refused rather than one silently winning
    assert call(module.main, ["--quick", "--preset", "default", "--out", str(tmp_path / "out")]) == 2
    assert "Received: preset='default', quick=True" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # a suite of other settings is a usage error too, reported before any statistic is computed
    assert call(module.main, ["--quick", "--n-sims", "1", "--out", str(tmp_path / "a")]) == 0
    assert call(module.main, ["--quick", "--n-sims", "1", "--n-steps", "5", "--suite", str(tmp_path / "a" / "suite"),
                              "--out", str(tmp_path / "b")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
