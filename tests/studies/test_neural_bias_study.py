"""tfhalo.studies.neural_bias end to end on tiny simulations: outputs, ArviZ file, resume, scores."""

import dataclasses
import json

import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.studies import common, neural_bias


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Five tiny simulations as a directory of .h5 files (used as it is by ensure_suite)."""
    from tfhalo.sim.hdf5 import write_simulation

    out = tmp_path_factory.mktemp("bias_suite")
    for i, sim in enumerate(make_tiny_suite(5, seed=11, n_halos=12, name=None)):
        write_simulation(sim, out / f"sim_{i:03d}.h5")
    return out


def tiny_config(**overrides):
    values = dict(n_sims=5, n_grid=4, threshold_particles=5.0, map_steps=120, map_starts=1, n_chains=2,
                  n_pilot=20, n_warmup=20, n_samples=20, max_tree_depth=4, jit_compile=False)
    values.update(overrides)
    return neural_bias.Config.preset("quick", seed=0, **values)


@pytest.fixture(scope="module")
def study(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("neural_bias") / "out"
    config = tiny_config(sample_field="lpt", step_scale=0.5)
    return config, out, neural_bias.run(config, suite, out, progress=False)


def test_run_writes_results_report_and_an_arviz_file(study):
    import arviz as az

    config, out, results = study
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"] == config.to_dict() and saved["seed"] == 0 and "OPENBLAS_CORETYPE" in saved["machine"]
    assert saved["data"]["n_parameters"] == 17 and saved["data"]["test_simulation"].startswith("tiny_015")
    for row in saved["summary"]:
        assert set(row) == {"quantity", "value", "error", "error_kind", "paper", "note"}
        assert row["error"] is None or row["error_kind"]
    rows = {r["quantity"]: r for r in saved["summary"]}
    diff = rows["held-out ln L difference, neural - Neyrinck (nats)"]
    ll = saved["log_likelihood"]
    assert diff["value"] == pytest.approx(ll["neural_test"] - ll["neyrinck_test"], rel=1e-9)
    assert diff["error"] > 0 and diff["error_kind"] == "standard error"

    idata = az.from_netcdf(out / "posterior.nc")
    theta = idata.posterior["theta"]
    assert theta.sizes["chain"] == 2 and theta.sizes["draw"] == 20 and theta.sizes["parameter"] == 17
    assert np.all(np.isfinite(theta.values))
    assert {"diverging", "energy", "step_size"} <= set(idata.sample_stats.data_vars)
    summary = az.summary(idata, var_names=["theta"])
    assert len(summary) == 17
    conv = saved["convergence"]
    assert conv["n_chains"] == 2 and conv["n_draws"] == 20

    # 20 draws cannot give ESS >= 400: the report must say so and name the criterion.
    text = (out / "report.md").read_text()
    assert "NOT converged" in text and "bulk ESS" in text
    # Chain groups as in the quick preset (one chain per group), warmed up together.
    assert config.chain_groups == 2 and "2 chains in 2 groups of 1 (one warm-up of all chains), NUTS" in text
    assert "target acceptance 0.995, kept draws at 0.5 of the adapted step, in the local-linear" in text
    assert "a pilot run of 20 + 20 iterations at target acceptance 0.9 (itself preconditioned" in text
    assert idata.constant_data["inverse_mass_matrix"].dims == ("chain_group", "sampling_coordinate")
    shares = saved["component_shares"]
    assert sum(shares["map"]) == pytest.approx(1.0) and np.shape(shares["median_per_chain"]) == (2, 2)
    pmf = saved["predictive_mass_function"]
    assert np.shape(pmf["rhat"]) == np.shape(pmf["posterior_mean_ln_dn_dlnm"]) == (4, 5)
    lpd = saved["heldout_log_predictive"]
    assert lpd["draws_per_chain"] == 20 and len(lpd["per_chain"]) == 2
    # ln of a mean of likelihoods lies at or above the mean of the ln L (Jensen).
    assert saved["heldout_neural_posterior_mean_lnL"] <= lpd["all_chains"] + 1e-9
    for name in ("fig2_mass_function.png", "fig3_traces.png", "fig4_slices.png"):
        assert (out / name).stat().st_size > 0
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not (out / "chains_checkpoint").exists()
    # The quick preset's chains evaluate a float32 likelihood; the study compares it with float64.
    check = saved["sampler"]["precision_check"]
    assert config.chains_dtype == "float32" and check["dtype"] == "float32" and check["n_draws"] == 40
    assert 0.0 < check["importance_efficiency"] <= 1.0 and check["matches"] == (check["importance_efficiency"] >= 0.99)
    assert "evaluated the likelihood in float32" in text


def test_rerun_skips_the_map_and_the_chains(study, suite, monkeypatch):
    import tfhalo.bias.fit
    import tfhalo.inference
    from tfhalo.bias.neyrinck import NeyrinckBias

    config, out, first = study
    mtime = (out / "posterior.nc").stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("a finished step was run again")

    monkeypatch.setattr(tfhalo.bias.fit, "fit_map", refuse)
    monkeypatch.setattr(tfhalo.inference, "sample", refuse)
    monkeypatch.setattr(NeyrinckBias, "fit", refuse)
    monkeypatch.setattr(neural_bias, "_draw_diagnostics", refuse)
    monkeypatch.setattr(neural_bias, "_figures", refuse)
    again = neural_bias.run(config, suite, out, progress=False)
    assert (out / "posterior.nc").stat().st_mtime_ns == mtime
    np.testing.assert_equal(again["map"]["theta"], first["map"]["theta"])
    # The diagnostics are recomputed from posterior.nc (ArviZ), so they agree to rounding; a
    # 20-draw chain of this tiny posterior may give no R-hat at all (None) on some machines.
    rhat = (again["convergence"]["max_rhat"], first["convergence"]["max_rhat"])
    assert rhat[0] is rhat[1] is None or np.isclose(*rhat, rtol=1e-12, atol=0, equal_nan=True)
    # Read back, not recomputed: equal to the bit, NaN included (a 20-draw chain of this tiny
    # posterior can reach held-out ln L = -inf, whose between-chain error is NaN on some machines).
    np.testing.assert_equal(again["heldout_log_predictive"], first["heldout_log_predictive"])
    np.testing.assert_equal(again["log_likelihood"], first["log_likelihood"])
    np.testing.assert_equal(again["summary"], first["summary"])


def test_other_sampler_settings_in_the_same_out_are_refused_before_any_work(study, suite, monkeypatch):
    import tfhalo.bias.fit

    config, out, _ = study

    def refuse(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(tfhalo.bias.fit, "fit_map", refuse)
    # Another seed, step scale or pilot target changes the chains.
    for change in (dict(sampler_seed=5), dict(step_scale=0.7), dict(pilot_target_accept=0.8)):
        other = tiny_config(sample_field="lpt", **{"step_scale": 0.5, **change})
        assert other != config
        with pytest.raises(common.StaleCacheError, match="chains.json"):
            neural_bias.run(other, suite, out, progress=False)


def test_heldout_difference_and_its_standard_error_match_numpy(suite):
    """Per-voxel terms of both models written out in NumPy (float64); their sums are the two ln L."""
    from tfhalo.bias.neyrinck import NeyrinckBias

    config = tiny_config()
    data = neural_bias.load_data(config, sorted(suite.glob("*.h5")))
    theta = data.like.layout.get(data.model) + np.random.default_rng(0).normal(scale=0.1, size=17)
    neyrinck = NeyrinckBias(seed=0, n_starts=2).fit(data.train)
    got = neural_bias.heldout_scores(data, theta, neyrinck)

    test = data.test
    alpha, mu, sigma = np.split(data.like_test.per_voxel(theta)["params"].reshape(-1, 6), 3, axis=-1)
    ln_m = test.halo_ln_mass
    v = test.halo_voxel
    gauss = np.exp(-0.5 * ((ln_m[:, None] - mu[v]) / sigma[v]) ** 2) / (np.sqrt(2 * np.pi) * sigma[v])
    ln_n = np.log((alpha[v] * np.exp(-mu[v]) * gauss).sum(-1))  # n(M) = sum alpha e^{-mu} N(ln M; mu, sigma)
    from scipy.special import erfc

    # int_{M_th}^inf alpha e^{-mu} N(ln M; mu, sigma) dM = alpha/2 e^{sigma^2/2} erfc((ln M_th - mu - sigma^2)
    # / (sqrt2 sigma)), per component.
    lmt = test.log_mass_threshold
    expected = test.voxel_volume * (0.5 * alpha * np.exp(0.5 * sigma**2)
                                    * erfc((lmt - mu - sigma**2) / (np.sqrt(2) * sigma))).sum(-1)
    neural = np.bincount(v, weights=ln_n, minlength=test.one_plus_delta.size) - expected
    rho = test.one_plus_delta.ravel()
    ney = (np.bincount(v, weights=neyrinck.log_number_density(rho[v], ln_m, test.voxel_volume),
                       minlength=rho.size) - neyrinck.rate(rho))
    diff = neural - ney
    assert got["neural_test"] == pytest.approx(float(data.like_test.log_likelihood(theta)), rel=1e-9)
    assert got["neyrinck_test"] == pytest.approx(neyrinck.log_likelihood(test), rel=1e-12)
    assert got["difference"] == pytest.approx(diff.sum(), rel=1e-9)
    se = np.sqrt(diff.size) * np.std(diff, ddof=1)
    assert got["difference_standard_error"] == pytest.approx(se, rel=1e-9)
    assert got["difference_per_halo_standard_error"] == pytest.approx(se / test.n_halos, rel=1e-9)


def test_predictive_mass_function_matches_numpy_mixture(suite):
    """ln of the density-bin mean of M n(M | psi) against the mixture written out in NumPy (float64)."""
    data = neural_bias.load_data(tiny_config(), sorted(suite.glob("*.h5")))
    like = data.like_test
    theta = like.layout.get(data.model) + np.random.default_rng(0).normal(scale=0.1, size=like.layout.size)
    got = neural_bias.predictive_mass_function(like, theta).reshape(4, -1)

    alpha, mu, sigma = np.split(like.per_voxel(theta)["params"].reshape(-1, 6), 3, axis=-1)  # (V, 2) each
    ln_m = data.test.log_mass_threshold + np.asarray(neural_bias.PREDICTIVE_LN_MASS_ABOVE_THRESHOLD)
    gauss = np.exp(-0.5 * ((ln_m[None, :, None] - mu[:, None]) / sigma[:, None]) ** 2) / (
        np.sqrt(2 * np.pi) * sigma[:, None])
    dn_dlnm = np.exp(ln_m)[None, :] * (alpha[:, None] * np.exp(-mu[:, None]) * gauss).sum(-1)  # (V, M)
    log_rho = np.log(data.test.one_plus_delta).ravel()
    edges = np.quantile(log_rho, neural_bias.DENSITY_QUANTILES)
    bins = np.clip(np.digitize(log_rho, edges[1:-1]), 0, 3)
    want = np.log([dn_dlnm[bins == b].mean(axis=0) for b in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_data_fingerprint_follows_the_content_not_the_path(suite, tmp_path):
    import shutil

    config = tiny_config()
    paths = sorted(suite.glob("*.h5"))
    moved = []
    for p in paths:
        shutil.copy(p, tmp_path / p.name)
        moved.append(tmp_path / p.name)
    a = neural_bias.load_data(config, paths)
    assert a.fingerprint() == neural_bias.load_data(config, moved).fingerprint()
    assert a.fingerprint() != neural_bias.load_data(config, paths[::-1]).fingerprint()  # another held out
    assert a.fingerprint() != neural_bias.load_data(tiny_config(threshold_particles=6.0), paths).fingerprint()


def test_float32_chains_likelihood_and_precision_check_against_numpy(suite):
    """The float32 twin agrees with float64 to float32 rounding; the check's efficiency is Kish's, in NumPy."""
    config = tiny_config()
    data = neural_bias.load_data(config, sorted(suite.glob("*.h5")))
    assert neural_bias.chains_likelihood(dataclasses.replace(config, chains_dtype="float64"), data) is data.like_sample
    like32 = neural_bias.chains_likelihood(config, data)
    assert str(like32.layout.dtype) == "float32" and like32.n_halos == data.like_sample.n_halos
    rng = np.random.default_rng(3)
    theta0 = data.like.layout.get(data.model)
    samples = theta0 + rng.normal(scale=0.05, size=(6, 2, 17))
    lp64 = np.array([float(data.like_sample.log_posterior(t)) for t in samples.reshape(-1, 17)])
    lp32 = np.array([float(like32.log_posterior(t)) for t in samples.reshape(-1, 17)])
    np.testing.assert_allclose(lp32, lp64, rtol=1e-5)
    d = lp64 - lp32
    w = np.exp(d - d.max())
    got = neural_bias.precision_check(data.like_sample, like32, samples, draws_per_chain=6)
    assert got["n_draws"] == 12 and got["dtype"] == "float32"
    assert got["importance_efficiency"] == pytest.approx(w.sum() ** 2 / (12 * (w**2).sum()), rel=1e-12)
    assert got["sd_nats"] == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    # A likelihood that differs by a non-constant amount is flagged; a constant offset is not.
    class Shifted:
        layout = like32.layout

        def __init__(self, slope):
            self.slope = slope

        def log_posterior(self, theta):
            return float(data.like_sample.log_posterior(theta)) + 5.0 + self.slope * float(np.sum(theta))

    assert neural_bias.precision_check(data.like_sample, Shifted(0.0), samples)["importance_efficiency"] == (
        pytest.approx(1.0))
    tilted = neural_bias.precision_check(data.like_sample, Shifted(20.0), samples)
    assert not tilted["matches"] and tilted["importance_efficiency"] < 0.9


def test_chains_dtype_is_validated_and_keys_the_chains_cache():
    with pytest.raises(ValueError, match="chains_dtype.*Received: chains_dtype='float16'"):
        tiny_config(chains_dtype="float16")
    assert neural_bias.Config.preset("paper").chains_dtype == "float64"
