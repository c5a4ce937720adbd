"""experiments/neural_bias.py end to end on a tiny generated suite (short chains)."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("neural_bias_study", ROOT / "experiments" / "neural_bias.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from tfhalo.sim import generate_suite
    from tfhalo.sim.suite import resolve_preset

    out = tmp_path_factory.mktemp("bias_suite") / "suite"
    generate_suite(out, preset=resolve_preset("quick", n_side=32, box_size=30.0, n_steps=5), n_sims=3, seed=3,
                   progress=False)
    return out


def test_quick_study_end_to_end_with_both_fields_replicas_and_caches(study, suite, tmp_path, capsys):
    out = tmp_path / "bias"
    argv = ["--suite", str(suite), "--out", str(out), "--n-grid", "4", "--threshold-particles", "20",
            # A few warm-up steps adapt the step size: with the initial one every proposal can be rejected.
            "--n-samples", "12", "--n-burnin", "10", "--leapfrog-steps", "2", "--field", "nbody",
            "--sample-field", "lpt", "--temperatures", "2", "--reparametrize", "--map-steps", "150",
            "--map-starts", "1", "--chains", "2", "--components", "2", "--no-xla", "--no-progress"]
    results = study.main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_parameters"] == results["n_parameters"] == 17
    assert saved["field"] == "nbody" and saved["sample_field"] == "lpt"
    assert saved["test_simulation"] == "sim_002:nbody" or saved["test_simulation"].startswith("sim_002")
    assert len(saved["diagnostics"]["rhat"]) == 17
    assert saved["sampler"]["replicas"] == 2 and len(saved["sampler"]["swap_acceptance_adjacent"]) == 1
    shares = np.array(saved["component_shares"]["median_per_chain"])
    assert shares.shape == (2, 2) and np.all(shares >= 0)
    assert sum(saved["component_shares"]["map"]) == pytest.approx(1.0)
    assert len(saved["component_shares"]["split_rhat"]) == 2  # one per component, from 12 draws x 2 chains
    assert np.all(np.isfinite(saved["component_shares"]["split_rhat"]))
    predictive = saved["predictive_mass_function"]
    assert np.shape(predictive["split_rhat"]) == np.shape(predictive["posterior_mean_ln_dn_dlnm"]) == (4, 5)
    assert np.all(np.isfinite(predictive["split_rhat"])) and "Predicted mass function" in (out / "report.md").read_text()
    # Both models are scored on the same held-out halos by the same likelihood.
    ll = saved["log_likelihood"]
    assert saved["heldout_difference_total"] == pytest.approx(ll["neural_test"] - ll["neyrinck_test"])
    other = saved["other_half_space"]  # the reflected MAP's optimum, or None if it came back
    assert other is None or (other["log_posterior_below_map"] >= 0 and np.isfinite(other["log_laplace_mass_ratio"]))
    predictive_score = saved["heldout_log_predictive"]
    assert predictive_score["draws_per_chain"] == 12 and len(predictive_score["per_chain"]) == 2
    # ln of a mean of likelihoods lies between the mean and the max of the ln L.
    assert saved["heldout_neural_posterior_mean_lnL"] <= predictive_score["all_chains"] + 1e-9
    for name in ("report.md", "fig2_mass_function.png", "fig3_traces.png", "fig4_slices.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp*"))
    # Resuming reuses the MAP and the chains exactly.
    capsys.readouterr()
    again = study.main(argv)
    printed = capsys.readouterr().out
    assert "MAP: reusing" in printed and "chains: reusing" in printed
    np.testing.assert_allclose(again["diagnostics"]["mean"], results["diagnostics"]["mean"], rtol=0, atol=0)


def test_bad_settings_fail_before_any_work(study, tmp_path):
    with pytest.raises(ValueError, match="n_samples must be positive. Received: n_samples=0"):
        study.main(["--suite", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--n-samples", "0"])
    assert not (tmp_path / "none").exists()


def test_flow_preconditioned_one_gaussian_study(study, suite, tmp_path):
    from tfhalo.sim import load

    out = tmp_path / "flow"
    m_th = 20.5 * load(sorted(suite.glob("sim_*.h5"))[0]).particle_mass  # a cut in Msun/h, as the paper's
    argv = ["--suite", str(suite), "--out", str(out), "--n-grid", "4", "--threshold-mass", repr(m_th),
            "--n-samples", "8", "--n-burnin", "0", "--leapfrog-steps", "2", "--components", "1",
            "--flow-steps", "5", "--pilot-samples", "12", "--flow-burnin", "0", "--flow-leapfrog-steps", "3",
            "--map-steps", "100", "--map-starts", "1", "--chains", "2", "--no-xla", "--no-progress"]
    results = study.main(argv)
    assert results["mass_threshold"] == m_th
    assert results["n_parameters"] == 11 and len(results["diagnostics"]["rhat"]) == 11
    flow = results["sampler"]["flow"]
    assert flow["steps"] == 5 and np.isfinite(flow["elbo_last_100"])
    assert flow["pilot_samples"] == 12 and flow["pilot_gradient_evaluations_per_chain"] == 12 * 2
    # The cost counts the pilot chains, the flow fit (5 steps of 16 draws over
    # 2 chains) and the final chains (8 draws of 3 leapfrog steps).
    assert results["sampler"]["gradient_evaluations_per_chain"] == 12 * 2 + 5 * 16 // 2 + 8 * 3
    assert "normalising flow" in (out / "report.md").read_text()
    assert np.all(np.isfinite(np.load(out / "chains.npz")["samples"]))


@pytest.mark.parametrize("extra, match", [
    (["--components", "0"], "n_components must be positive"),
    (["--n-sims", "1"], "n_sims must be at least 2"),
    (["--flow-steps", "-1"], "flow_steps must be >= 0"),
    (["--flow-steps", "10", "--no-reparametrize"], "reparametrised coordinates"),
    (["--flow-steps", "10", "--pilot-samples", "4"], "twice as many draws as parameters"),
    (["--flow-burnin", "-1"], "flow_burnin must be >= 0"),
    (["--flow-leapfrog-steps", "0"], "flow_leapfrog_steps must be positive"),
    (["--threshold-mass", "-1"], r"threshold_mass must be positive \(Msun/h\). Received: threshold_mass=-1.0"),
    (["--threshold-particles", "0"], "threshold_particles must be positive. Received: threshold_particles=0.0"),
])
def test_bad_sampler_settings_fail_before_any_work(study, tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        study.main(["--suite", str(tmp_path / "none"), "--out", str(tmp_path / "o"), *extra])
    assert not (tmp_path / "none").exists()


def test_predictive_mass_function_matches_numpy_mixture(study, suite):
    """ln of the density-bin mean of M n(M | psi) against the mixture written out in NumPy (float64)."""
    from tfhalo.bias import NeuralBiasLikelihood, bias_data_from_simulation, build_model
    from tfhalo.sim import load

    sim = load(sorted(suite.glob("sim_*.h5"))[0])
    data = bias_data_from_simulation(sim, 4, 20 * sim.particle_mass)
    model = build_model(data.log_mass_threshold, n_grid=4, dtype="float64")
    like = NeuralBiasLikelihood(model, data)
    theta = like.layout.get(model) + np.random.default_rng(0).normal(scale=0.1, size=like.layout.size)
    got = study.predictive_mass_function(like, theta).reshape(4, -1)

    alpha, mu, sigma = np.split(like.per_voxel(theta)["params"].reshape(-1, 6), 3, axis=-1)  # (V, 2) each
    ln_m = data.log_mass_threshold + np.asarray(study.PREDICTIVE_LN_MASS_ABOVE_THRESHOLD)
    gauss = np.exp(-0.5 * ((ln_m[None, :, None] - mu[:, None]) / sigma[:, None]) ** 2) / (
        np.sqrt(2 * np.pi) * sigma[:, None])
    dn_dlnm = np.exp(ln_m)[None, :] * (alpha[:, None] * np.exp(-mu[:, None]) * gauss).sum(-1)  # (V, M)
    log_rho = np.log(data.one_plus_delta).ravel()
    edges = np.quantile(log_rho, study.DENSITY_QUANTILES)
    bins = np.clip(np.digitize(log_rho, edges[1:-1]), 0, 3)
    want = np.log([dn_dlnm[bins == b].mean(axis=0) for b in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_heldout_log_predictive_matches_numpy_and_rejects_bad_shapes(study):
    rng = np.random.default_rng(1)
    lnl = -5000.0 + rng.normal(scale=3.0, size=(50, 4))
    got = study.heldout_log_predictive(lnl)
    # Shifted by the max, the mean of exp is safe in float64.
    shift = lnl.max()
    assert got["all_chains"] == pytest.approx(shift + np.log(np.mean(np.exp(lnl - shift))), rel=0, abs=1e-9)
    for c in range(4):
        s = lnl[:, c].max()
        assert got["per_chain"][c] == pytest.approx(s + np.log(np.mean(np.exp(lnl[:, c] - s))), rel=0, abs=1e-9)
    assert got["draws_per_chain"] == 50
    with pytest.raises(ValueError, match=r"Received shape \(3,\)"):
        study.heldout_log_predictive(np.zeros(3))


def test_paper_preset_is_the_papers_set_up(study):
    """64^3 voxels of ~3.9 Mpc/h and M_th = 2e12 Msun/h, resolved by >= 50 particles."""
    from tfhalo.sim import PRESETS as SIM_PRESETS

    paper = study.PRESETS["paper"]
    sim = SIM_PRESETS[paper.sim_preset]
    assert paper.n_grid == 64 and sim.box_size / paper.n_grid == pytest.approx(3.9, abs=0.05)
    assert paper.threshold_mass == 2e12 and paper.n_components == 2
    particle_mass = sim.cosmology.rho_mean * (sim.box_size / sim.n_side) ** 3
    assert paper.threshold_mass / particle_mass >= 50


def test_cache_fingerprint_follows_the_data_not_the_path(study, suite):
    from tfhalo.bias import bias_data_from_simulation
    from tfhalo.sim import load

    sims = [load(p) for p in sorted(suite.glob("sim_*.h5"))[:2]]
    datas = [bias_data_from_simulation(s, 4, 20 * s.particle_mass) for s in sims]
    again = [bias_data_from_simulation(s, 4, 20 * s.particle_mass) for s in sims]
    assert study._data_fingerprint(datas) == study._data_fingerprint(again)
    assert study._data_fingerprint(datas) != study._data_fingerprint(datas[::-1])  # held out vs trained on
    moved = dataclasses.replace(datas[0], halo_mass=datas[0].halo_mass * (1 + 1e-12))
    assert study._data_fingerprint([moved, datas[1]]) != study._data_fingerprint(datas)
