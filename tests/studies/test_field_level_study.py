"""The field-level study end to end on a tiny simulation: files, round trips, resume, the truth."""

import json
from dataclasses import replace as dataclass_replace

import h5py
import numpy as np
import pytest

from tfhalo.studies import field_level

# The tests run the joint sampler of the Config's defaults at a tiny size; a test that wants the quick
# preset's blocked route (field_level.QUICK_SAMPLER) names its settings.
TINY = dict(n_side=32, box_size=48.0, n_grid=8, threshold_mass=5e12, map_steps=50, map_starts=1, settings=("mock",),
            map_field_steps=20, n_probes=1, n_warmup=20, n_samples=20, leapfrog_steps=3, n_field_draws=2, thin=1,
            n_bins=3, jit_compile=False, workers=1, **field_level.JOINT_SAMPLER)


def load_cosmology(root):
    from tfhalo.sim import load

    return load(sorted((root / "suite").glob("*.h5"))[0]).cosmology


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("field_level")
    config = field_level.Config.preset("quick", seed=3, **TINY)
    results = field_level.run(config, root / "suite", root / "out", progress=False)
    return config, root, results


def _out_with_the_fixtures_bias_fit(study, tmp_path):
    """A fresh output directory holding the fixture's cached bias fit, which a run of the same
    simulation, grid, threshold, head and fit settings reads back instead of fitting again."""
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy2(study[1] / "out" / "bias_fit.npz", out / "bias_fit.npz")
    return out


def test_run_writes_results_report_figures_and_samples(study):
    config, root, results = study
    out = root / "out"
    assert json.loads((out / "results.json").read_text())["study"] == "field_level"
    assert "Self-consistent mock" in (out / "report.md").read_text()
    s = results["settings"]["mock"]
    for name in s["figures"].values():
        assert (out / "mock" / name).stat().st_size > 0
    n = config.n_grid
    with h5py.File(out / "mock" / field_level.SAMPLES_FILE) as f:
        assert f["omega"].shape == (config.n_samples, config.n_chains, n, n, n)
        assert f["delta_lin"].shape == f["omega"].shape
        omega = f["omega"][...].astype(np.float64)
        expected = field_level.linear_fields(omega.reshape(-1, n, n, n), 48.0, load_cosmology(root)).reshape(omega.shape)
        np.testing.assert_allclose(f["delta_lin"][...], expected, atol=1e-5 * np.abs(expected).max())
        assert f["theta"].shape == (config.n_samples, config.n_chains, 17)
        assert len(f["theta"].attrs["names"]) == 17
        assert f["truth/omega"].shape == (n, n, n)
        assert f["data/halo_positions"].shape == (s["n_halos"], 3)
        assert f.attrs["n_grid"] == n and f.attrs["box_size"] == pytest.approx(48.0)
    import arviz as az

    idata = az.from_netcdf(out / "mock" / field_level.POSTERIOR_FILE)
    assert idata.posterior["bias"].shape == (config.n_chains, config.n_samples, 17)
    assert np.all(np.isfinite(idata.posterior["bias"].values))
    assert "power_low_k" in idata.posterior
    assert set(s["sampler"]) >= {"n_gradient_evaluations", "gradients_per_ess_power_low_k", "n_divergent", "seconds"}
    assert s["sampler"]["blocks"] is None  # one joint kernel
    assert results["summary"] and all("quantity" in row for row in results["summary"])
    # The bias spread, recomputed from the saved draws and the chains' conditional widths.
    theta = np.moveaxis(idata.posterior["bias"].values, 0, 1)               # (S, C, 17)
    want = theta.reshape(-1, 17).std(axis=0, ddof=1) / np.asarray(s["sampler"]["bias_scale"])
    np.testing.assert_allclose(s["sampler"]["bias_spread"]["per_parameter"], want, rtol=1e-6)
    assert s["sampler"]["bias_spread"]["median"] == pytest.approx(np.median(want), rel=1e-6)
    assert "of their conditional widths at the start" in (out / "report.md").read_text()
    assert any("conditional width" in row["quantity"] for row in results["summary"])
    # Contraction and the generating bias's z-scores, recomputed from the saved draws and the bias fit that the
    # mock catalogue was drawn with.
    ident = s["bias_identification"]
    flat = idata.posterior["bias"].values.reshape(-1, 17)                # chains pooled, as the study pools them
    sd = flat.std(axis=0, ddof=1)
    np.testing.assert_allclose(ident["contraction"], 1 - sd**2 / 10.0**2, rtol=1e-9)
    theta_fit = np.load(out / "bias_fit.npz")["theta"]
    np.testing.assert_allclose(ident["z"], (theta_fit - flat.mean(axis=0)) / sd, rtol=1e-9, atol=1e-9)
    assert ident["weakly_identified"] == [p for p, c in zip(ident["parameters"], ident["contraction"]) if c < 0.5]
    assert ident["parameters"] == [str(p) for p in idata.posterior["parameter"].values]
    assert "of the 17 bias parameters' priors" in (out / "report.md").read_text()
    assert any("max |posterior z|" in row["quantity"] for row in results["summary"])


def test_coverage_and_power_recomputed_from_the_saved_samples_match_the_report(study):
    from tfhalo.field import analysis as fa

    config, root, results = study
    s = results["settings"]["mock"]
    with h5py.File(root / "out" / "mock" / field_level.SAMPLES_FILE) as f:
        omega = f["omega"][...].astype(np.float64)
        truth = f["truth/omega"][...]
        delta_true = f["truth/delta_lin"][...]
        box = float(f.attrs["box_size"])
    bins = fa.k_bins(config.n_grid, box, n_bins=config.n_bins)
    draws = omega.reshape(-1, *omega.shape[2:])
    cover = fa.coverage(fa.hartley_coefficients(draws), fa.hartley_coefficients(truth)[0], bins,
                        n_chains=omega.shape[1])
    assert field_level.coverage_from_samples(root / "out" / "mock" / field_level.SAMPLES_FILE,
                                             n_bins=config.n_bins) == cover
    with pytest.raises(ValueError, match="path must be a samples file"):
        field_level.coverage_from_samples(root / "out" / "none.h5")
    for level, v in cover["levels"].items():
        # the run judges the float32 draws it stores, so the saved draws give its numbers back
        got = s["coverage"]["levels"][level]
        for key in ("fraction", "expected", "expected_stderr", "z", "z_expected"):
            np.testing.assert_allclose(v[key], got[key], rtol=1e-9, atol=1e-12, err_msg=f"{level} {key}")
        assert all(e <= float(level) for e in got["expected"])
    # calibrated: within 3 binomial errors of the exact sampler's expectation in every bin
    z = [abs(x) for v in s["coverage"]["levels"].values() for x in v["z_expected"]]
    assert s["calibrated"] is (max(z) <= field_level.COVERAGE_Z_MAX)
    assert "what exact chains of these draws give" in (root / "out" / "report.md").read_text()
    np.testing.assert_allclose(fa.binned_power(delta_true, bins)[0], s["power"]["truth"], rtol=1e-10)


def test_results_written_before_the_coverage_expectation_still_report(study):
    import copy

    _, _, results = study
    old = copy.deepcopy(results)
    for s in old["settings"].values():
        s.pop("calibrated_nominal")
        for v in s["coverage"]["levels"].values():
            for key in ("expected", "expected_stderr", "z_expected"):
                v.pop(key)
    text = field_level.report(old)
    assert "nominal within 3 binomial standard errors" in text and "exact chains" not in text
    level = old["settings"]["mock"]["coverage"]["levels"]["0.95"]
    assert field_level.coverage_z(level) == level["z"]


def test_truth_is_the_simulations_white_noise_truncated_to_the_grid(study):
    from tfhalo.field.forward import truncate_white_noise
    from tfhalo.sim import load
    from tfhalo.sim.ics import white_noise

    config, root, _ = study
    sim = load(sorted((root / "suite").glob("*.h5"))[0])
    expected = truncate_white_noise(white_noise(sim.initial_density.shape[0], sim.seed), config.n_grid)
    got = field_level.truth_white_noise(sim, config.n_grid)
    # the k = 0 mode is not in the linear field, so the truth leaves it at zero
    assert abs(got.mean()) < 1e-12
    # the initial density is stored in float32
    np.testing.assert_allclose(got, expected - expected.mean(), atol=1e-5 * np.abs(expected).max())


def test_a_rerun_reuses_every_step(study, monkeypatch):
    import tfhalo.bias.fit
    import tfhalo.inference

    config, root, results = study

    def fail(*args, **kwargs):
        raise AssertionError("a finished step was recomputed")

    monkeypatch.setattr(tfhalo.inference, "sample", fail)
    monkeypatch.setattr(tfhalo.bias.fit, "fit_map", fail)
    again = field_level.run(config, root / "suite", root / "out", progress=False)
    assert again["settings"] == results["settings"]


def test_changed_settings_are_refused_before_any_work(study):
    from tfhalo.studies.common import StaleCacheError

    config, root, _ = study
    other = field_level.Config.preset("quick", seed=3, **{**TINY, "leapfrog_steps": 4})
    with pytest.raises(StaleCacheError, match="leapfrog_steps"):
        field_level.run(other, root / "suite", root / "out", progress=False)


def test_chains_that_keep_every_thin_th_field_draw_report_the_same_and_extend(study, tmp_path):
    # keep_field_draws=False: the chains keep the white noise every 2nd draw, its mean and each draw's power
    # (the paper preset's memory). Same chains as the fixture's (keep_checkpoint and thin do not change them),
    # so every number that uses all draws is the same; the coverage comes from the saved draws, as samples.h5
    # gives it back.
    from tfhalo.field import analysis as fa
    from tfhalo.studies.common import StaleCacheError

    config, root, results = study
    keep = dataclass_replace(config, keep_checkpoint=True, keep_field_draws=False, thin=2)
    first = field_level.run(keep, root / "suite", _out_with_the_fixtures_bias_fit(study, tmp_path), progress=False)
    got, want = first["settings"]["mock"], results["settings"]["mock"]
    for name in ("posterior_mean", "posterior_16", "posterior_84", "z_vs_prior"):
        np.testing.assert_allclose(got["power"][name], want["power"][name], rtol=1e-9)
    np.testing.assert_allclose(got["cross_correlation"]["r"], want["cross_correlation"]["r"], rtol=1e-8)
    np.testing.assert_allclose(got["sampler"]["bias_spread"]["per_parameter"],
                               want["sampler"]["bias_spread"]["per_parameter"], rtol=1e-9)
    for name, v in want["convergence"]["parameters"].items():
        for stat in ("rhat", "ess_bulk"):  # None where ArviZ gives nan
            a, b = got["convergence"]["parameters"][name][stat], v[stat]
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9), (name, stat)
    checkpoint = tmp_path / "out" / "mock" / "checkpoint"
    with np.load(sorted(checkpoint.glob("*/block_*.npz"))[0]) as f:  # the bias every draw, the field every 2nd
        assert f["draws"].shape[-1] == 17 and f["thinned"].shape[-1] == config.n_grid**3
        assert f["thinned"].shape[0] == (f["draws"].shape[0] + 1) // 2
    with h5py.File(tmp_path / "out" / "mock" / field_level.SAMPLES_FILE) as f:
        omega, truth, theta_20 = f["omega"][...].astype(np.float64), f["truth/omega"][...], f["theta"][...]
    assert omega.shape[0] == config.n_samples // 2 and theta_20.shape[0] == config.n_samples
    bins = fa.k_bins(config.n_grid, 48.0, n_bins=config.n_bins)
    cover = fa.coverage(fa.hartley_coefficients(omega.reshape(-1, *omega.shape[2:])),
                        fa.hartley_coefficients(truth)[0], bins)
    for level, v in cover["levels"].items():
        np.testing.assert_allclose(v["fraction"], got["coverage"]["levels"][level]["fraction"], atol=0.02)

    # A larger n_samples extends the kept checkpoint without rerunning the warm-up.
    warmups = sorted(checkpoint.glob("*/warmup.npz"))
    assert len(warmups) == 1
    stamp = warmups[0].stat().st_mtime_ns
    again = field_level.run(dataclass_replace(keep, n_samples=30), root / "suite", tmp_path / "out", progress=False)
    with h5py.File(tmp_path / "out" / "mock" / field_level.SAMPLES_FILE) as f:
        theta_30, omega_30 = f["theta"][...], f["omega"]
        assert omega_30.shape[0] == 15
        np.testing.assert_array_equal(omega_30[:10], omega.astype(np.float32))
    assert theta_30.shape[0] == 30
    np.testing.assert_array_equal(theta_30[:20], theta_20)
    assert warmups[0].stat().st_mtime_ns == stamp  # the warm-up was read back, not run again
    assert again["config"]["n_samples"] == 30 and first["config"]["n_samples"] == 20
    # The chains kept the field thinned by 2: another thin is other chains, refused, not re-read.
    with pytest.raises(StaleCacheError):
        field_level.run(dataclass_replace(keep, n_samples=30, thin=3), root / "suite", tmp_path / "out",
                        progress=False)
    # Without keep_checkpoint the checkpoint goes once the setting is done (the default), and another
    # n_samples is then refused as stale, as any other change.
    assert not (root / "out" / "mock" / "checkpoint").exists()
    with pytest.raises(StaleCacheError, match="config"):
        field_level.run(dataclass_replace(config, n_samples=30), root / "suite", root / "out", progress=False)


def test_settings_at_once_go_to_the_worker_function_and_come_back_in_order(study, tmp_path, monkeypatch):
    """The study's side of ``workers``: what it hands each process and what it makes of the answers.  The
    processes themselves (spawned, threads shared) are tested with ``map_in_processes``; here the calls run in
    this process after a pickle round trip, as a spawned process receives them, and the setting's chains are
    replaced by the fixture's finished result, so that no chain runs twice."""
    import pickle

    from tfhalo.studies import common

    config, root, results = study
    both = dataclass_replace(config, settings=("mock", "nbody"), workers=2)
    out = _out_with_the_fixtures_bias_fit(study, tmp_path)
    handed, ran = [], []

    def in_this_process(fn, calls, workers):
        handed.append((fn, [c[3] for c in calls], workers))
        return [fn(*pickle.loads(pickle.dumps(c))) for c in calls]

    def finished(config, setting, out, extended, overwrite, progress, **inputs):
        ran.append((setting, inputs))
        return dict(results["settings"]["mock"], tag=setting)

    monkeypatch.setattr(common, "map_in_processes", in_this_process)
    monkeypatch.setattr(field_level, "_sample_and_analyse", finished)
    r = field_level.run(both, root / "suite", out, progress=False)
    assert handed == [(field_level._setting_in_process, ["mock", "nbody"], 2)]
    assert [s for s, _ in ran] == ["mock", "nbody"]
    assert [s["tag"] for s in r["settings"].values()] == ["mock", "nbody"]
    # Each process rebuilds the inputs from the caches the study wrote: the same bias fit and true field.
    with np.load(root / "out" / "bias_fit.npz") as f:
        theta_fit = f["theta"]
    with h5py.File(root / "out" / "mock" / field_level.SAMPLES_FILE) as g:
        truth = g["truth/omega"][...]
    for _, inputs in ran:
        np.testing.assert_array_equal(inputs["theta_fit"], theta_fit)
        np.testing.assert_allclose(inputs["omega_true"].ravel(), truth.ravel(), rtol=1e-6, atol=1e-7)
        assert inputs["forward"].dtype == both.forward_dtype
    assert r["timings"]["settings_at_once"] == 2 and r["timings"]["nbody_s"] > 0
    assert "the settings 2 at a time in processes of their own" in (out / "report.md").read_text()


def test_bad_arguments_are_refused(tmp_path):
    config = field_level.Config.preset("quick", **TINY)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out must be a directory"):
        field_level.run(config, tmp_path / "suite", tmp_path / "file", progress=False)
    with pytest.raises(ValueError, match="config must be a field_level.Config"):
        field_level.run(object(), tmp_path / "suite", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="suite must be a non-empty directory path"):
        field_level.run(config, "", tmp_path / "out", progress=False)
    # More chain devices than the backend can give: refused before the suite is made.
    many = field_level.Config.preset("quick", **{**TINY, "n_chains": 64, "devices": 64})
    with pytest.raises(ValueError, match=r"devices.*Received: devices=64"):
        field_level.run(many, tmp_path / "suite", tmp_path / "out", progress=False)
    assert not (tmp_path / "suite").exists()


def _nbody_posterior(study):
    """The study's N-body posterior, its truth + fitted-bias state ``(P,)`` and the fitted ``theta``."""
    from tfhalo.bias.model import build_model
    from tfhalo.field.forward import LPTForwardModel
    from tfhalo.field.posterior import FieldCatalogue, FieldLevelPosterior
    from tfhalo.sim import load
    from tfhalo.sim.grid import wrap_periodic

    config, root, _ = study
    sim = load(sorted((root / "suite").glob("*.h5"))[0])
    with np.load(root / "out" / "bias_fit.npz") as f:
        theta = f["theta"]
    model = build_model(np.log(config.threshold_mass), config.n_grid, dtype="float64")
    forward = LPTForwardModel(config.n_grid, sim.box_size, cosmology=sim.cosmology, particle_factor=2)
    catalogue = FieldCatalogue.from_halos(wrap_periodic(sim.halos.centre, sim.box_size), sim.halos.mass,
                                          sim.box_size, config.n_grid, config.threshold_mass)
    posterior = FieldLevelPosterior(forward, model, catalogue)
    state = np.concatenate([field_level.truth_white_noise(sim, config.n_grid).reshape(-1), theta])
    return posterior, state, theta


def test_bias_conditional_is_the_joint_less_the_white_noise_prior(study):
    from tfhalo import backend

    posterior, state, _ = _nbody_posterior(study)
    rng = np.random.default_rng(4)
    states = np.stack([state, state + 0.05 * rng.normal(size=state.size)])
    n, n_field = study[0].n_grid, posterior.n_field
    joint = backend.to_numpy(posterior.log_prob(backend.constant(states)))
    omega = backend.constant(states[:, :n_field].reshape(2, n, n, n))
    conditional = backend.to_numpy(posterior.bias_log_prob(posterior.log_density(omega),
                                                           backend.constant(states[:, n_field:])))
    field_prior = -0.5 * np.sum(states[:, :n_field] ** 2, axis=1) - 0.5 * n_field * np.log(2 * np.pi)
    np.testing.assert_allclose(conditional, joint - field_prior, rtol=1e-10)
    # The samplers' helper: one field per chain, or one field given to every chain.
    theta = backend.constant(states[:, n_field:])
    per_chain = field_level.bias_given_fields_target(posterior, states[:, :n_field])
    np.testing.assert_allclose(backend.to_numpy(per_chain(theta)), joint - field_prior, rtol=1e-10)
    shared = field_level.bias_given_fields_target(posterior, states[0, :n_field].reshape(n, n, n), n_chains=2)
    same_field = np.concatenate([np.tile(states[:1, :n_field], (2, 1)), states[:, n_field:]], axis=1)
    field_prior_0 = -0.5 * np.sum(states[0, :n_field] ** 2) - 0.5 * n_field * np.log(2 * np.pi)
    np.testing.assert_allclose(backend.to_numpy(shared(theta)),
                               backend.to_numpy(posterior.log_prob(backend.constant(same_field))) - field_prior_0,
                               rtol=1e-10)
    one_chain = field_level.bias_given_fields_target(posterior, states[:1, :n_field].reshape(1, n, n, n))
    np.testing.assert_allclose(backend.to_numpy(one_chain(theta[:1])), (joint - field_prior)[:1], rtol=1e-10)
    bad = [(dict(omega=states[:, :n_field - 1]), r"omega must be \(C, 8, 8, 8\).*Received: omega.shape=\(2, 511\)"),
           (dict(omega=states[0, :n_field]), "n_chains must be an integer. Received: n_chains=None"),
           (dict(omega=states[:, :n_field], n_chains=2), "n_chains is for one field.*Received: n_chains=2"),
           (dict(omega=np.full(n_field, np.nan), n_chains=2), "omega must be finite")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            field_level.bias_given_fields_target(posterior, **kwargs)


def test_conditional_bias_widths_are_the_joints_curvature_in_the_bias(study):
    # The chains' starting bias scales come from the bias's conditional; its curvature in theta is the joint's.
    from keras import ops

    from tfhalo import backend
    from tfhalo.bias.fit import hessian_of

    posterior, state, _ = _nbody_posterior(study)
    n_field = posterior.n_field
    field = backend.constant(state[None, :n_field])
    joint = hessian_of(lambda t: posterior.log_prob(ops.concatenate([field, t[None, :]], axis=1))[0],
                       state[n_field:])
    want = np.clip(1.0 / np.sqrt(np.maximum(np.diag(joint), 1.0 / posterior.prior_scale**2)), 1e-4, None)
    got = field_level._conditional_bias_scale(posterior, state)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    assert np.all(want < posterior.prior_scale) and np.ptp(np.log(want)) > 1.0  # informative and unequal widths


# Two slice transitions per sweep keep the study's multi-step bias block covered. HMC takes one, with the
# field's move carrying the bias, a random step per bias transition, the one-Gaussian head, the bias metric
# and the field's Fourier scales re-estimated over the first half of the warm-up and the NPE's
# log radial scale as the bias's scale coordinate (one window, the default; the windows' hand-over is checked
# with the chains stood in for). NUTS shares HMC's step-size adaptation here and is checked in the
# blocked sampler's own tests (tests/inference), as the carry's exactness is.
@pytest.mark.parametrize("bias_kernel,bias_steps,bias_carry,factor,n_components,metric",
                         [("slice", 2, "none", 1.0, 2, "start"), ("hmc", 1, "npe_moments", 0.5, 1, "warmup")])
def test_gibbs_sampler_runs_the_study_and_moves_both_blocks(study, tmp_path, bias_kernel, bias_steps, bias_carry,
                                                            factor, n_components, metric):
    config, root, _ = study
    coordinates = "local_linear" if metric == "warmup" else "diagonal"
    scale = "log_scale" if metric == "warmup" else "curvature"
    gibbs = field_level.Config.preset("quick", seed=3, **{**TINY, "sampler": "gibbs", "bias_steps": bias_steps,
                                                         "bias_kernel": bias_kernel, "bias_carry": bias_carry,
                                                         "bias_min_step_factor": factor,
                                                         "n_components": n_components,
                                                         "bias_coordinates": coordinates, "bias_metric": metric,
                                                         "field_metric": metric, "bias_scale_coordinate": scale,
                                                         # one metric window of 8+8 sweeps, then 16
                                                         **({"n_warmup": 32} if metric == "warmup" else {})})
    out = _out_with_the_fixtures_bias_fit(study, tmp_path) if n_components == 2 else tmp_path / "out"
    results = field_level.run(gibbs, root / "suite", out, progress=False)
    # 4 radial weights and a bias of the NPE, then an amplitude, a mean and a width per Gaussian, each a
    # slope and an intercept
    n_bias = 5 + 6 * n_components
    assert len(results["bias_fit"]["theta"]) == n_bias
    s = results["settings"]["mock"]["sampler"]
    sweeps = gibbs.n_warmup + gibbs.n_samples
    assert s["n_gradient_evaluations"] == sweeps * (gibbs.leapfrog_steps + 1) * gibbs.n_chains
    assert 0.0 < s["acceptance_rate"] <= 1.0
    # Per block: the slice sampler has no acceptance ratio; a sweep diverges when any block does.
    blocks = s["blocks"]
    assert set(blocks) == ({"field", "bias"} if bias_kernel == "hmc" else {"field"})
    divergent = [b["n_divergent"] for b in blocks.values()]
    assert max(divergent) <= s["n_divergent"] <= sum(divergent)
    assert all(0.0 <= b["acceptance_rate"] <= 1.0 and b["step_size"] > 0 for b in blocks.values())
    with h5py.File(tmp_path / "out" / "mock" / field_level.SAMPLES_FILE) as f:
        omega, theta = f["omega"][...], f["theta"][...]
    assert np.all(np.isfinite(theta)) and np.all(np.isfinite(omega)) and theta.shape[-1] == n_bias
    # both blocks move: every chain visits more than one value of the bias and of the field
    assert np.all(np.ptp(theta, axis=0) > 0) and np.all(np.ptp(omega.reshape(gibbs.n_samples, gibbs.n_chains, -1),
                                                                axis=0).max(axis=-1) > 0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"then {bias_steps} {bias_kernel} move(s) of the bias" in report
    assert ("carrying the bias" in report) == (bias_carry == "npe_moments")
    assert ("steps drawn log-uniformly from 0.5 to 1" in report) == (factor == 0.5)
    assert ("a mixture head of 1 Gaussian; the paper's has 2" in report) == (n_components == 1)
    # The metric's windows are half the warm-up, inside the sweeps counted above.
    assert ("metric re-estimated from its draws over the first half of the warm-up" in report) == (metric == "warmup")
    assert ("the NPE's log radial scale as the bias's scale coordinate" in report) == (scale == "log_scale")
    assert results["config"]["bias_scale_coordinate"] == scale
    if metric == "warmup":
        bm = s["bias_metric"]
        assert (bm["sweeps"], bm["draws_per_chain"]) == (gibbs.n_warmup // 2, 8)
        assert [(w["sweeps"], w["draws_per_chain"]) for w in bm["windows"]] == [(16, 8)]
        assert sum(w["seconds"] for w in bm["windows"]) == pytest.approx(bm["seconds"])
        assert 0.0 <= bm["spread_min"] <= bm["spread_max"] and 0.0 < bm["seconds"] < s["seconds"]
        fm = s["field_metric"]
        assert {k: fm[k] for k in bm if k not in ("spread_min", "spread_max")} == {
            k: bm[k] for k in bm if k not in ("spread_min", "spread_max")}
        # one spread per |k| shell but k = 0, each between the regularisation's floor and the draws' reach
        n_shells = len(np.unique(np.add.outer(np.add.outer(*(np.fft.fftfreq(gibbs.n_grid) ** 2,) * 2),
                                              np.fft.fftfreq(gibbs.n_grid) ** 2)))
        assert len(fm["spread_by_shell"]) == n_shells - 1
        assert 0.0 < fm["spread_min"] <= min(fm["spread_by_shell"]) <= max(fm["spread_by_shell"]) <= fm["spread_max"]
        assert "the field's Fourier scales rescaled per |k| shell" in report
        assert ("The field's Fourier scales came from the first 16 warm-up sweeps" in report
                and "the last 8 per chain" in report)
    else:
        assert "bias_metric" not in s and "field_metric" not in s
        assert "the field's Fourier scales rescaled" not in report


@pytest.mark.parametrize("scale", field_level.BIAS_SCALE_COORDINATES)
def test_local_linear_bias_coordinates_are_an_exact_bijection_at_the_start(study, scale):
    from tfhalo import backend

    posterior, state, theta = _nbody_posterior(study)
    bijector, rep = field_level.local_linear_bias_bijector(posterior, state, return_rep=True, scale_coordinate=scale)
    assert rep.scale_coordinate == scale
    assert isinstance(bijector, backend.tfp.bijectors.Bijector)
    z = backend.to_numpy(bijector.inverse(backend.constant(theta[None])))
    assert np.allclose(z, 0.0, atol=1e-8)          # the start is the centre of the Laplace map
    z = backend.constant(z + 0.1 * np.random.default_rng(0).normal(size=z.shape))
    back = backend.to_numpy(bijector.inverse(bijector.forward(z)))
    np.testing.assert_allclose(back, backend.to_numpy(z), atol=1e-8)
    assert np.all(np.isfinite(backend.to_numpy(bijector.forward_log_det_jacobian(z, event_ndims=1))))


def test_pilot_bias_coordinates_whiten_the_pilots_draws(study, monkeypatch):
    """The study's pilot coordinates map the pilot's own draws to mean 0 and (shrunk) unit covariance,
    exactly invertibly, and the setting records what the pilot cost."""
    from tfhalo import backend

    # Shallow trees: what is tested is the whitening of whatever the pilot drew, not how far NUTS goes.
    monkeypatch.setattr(field_level, "BIAS_TREE_DEPTH", 3)
    pilots = []
    real = field_level._pilot_bias_bijector
    monkeypatch.setattr(field_level, "_pilot_bias_bijector", lambda *a: pilots.append(real(*a)) or pilots[-1])
    posterior, state, theta_fit = _nbody_posterior(study)
    # Without XLA (TINY's): at 50 draws its compilation costs more than it saves (36 s against 25 s in all)
    pilot_config = field_level.Config.preset("quick", seed=3, **{**TINY, "bias_coordinates": "pilot",
                                                                "n_bias_pilot": 50})
    state0 = np.stack([state, state])
    # the study's route to the bias coordinates (its joint and blocked samplers both take it)
    bijector, info = field_level._bias_bijector(pilot_config, posterior, state0, theta_fit, np.ones(17), 0, None,
                                                False)
    (same, pilot), = pilots
    assert same is bijector
    assert info["bias_pilot"]["bias_gradient_evaluations"] == pilot.n_gradient_evaluations > 0
    assert info["bias_pilot"]["seconds"] == pilot.seconds > 0
    draws = pilot.samples.reshape(-1, posterior.n_bias)
    assert pilot.samples.shape == (50, 2, posterior.n_bias) and np.all(np.isfinite(draws))
    z = backend.to_numpy(bijector.inverse(backend.constant(draws)))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    # Sigma = a C + b I with C the draws' covariance in the local-linear coordinates v,
    # a = n / (n + 5), b = 1e-3 * 5 / (n + 5) (Stan's regularisation): the whitened draws'
    # covariance L^-1 C L^-T has the eigenvalues c / (a c + b) of C's eigenvalues c.
    rep = bijector.bijectors[0]
    v = backend.to_numpy(rep.inverse(backend.constant(draws)))
    n = draws.shape[0]
    c = np.linalg.eigvalsh(np.cov(v, rowvar=False))
    expected = np.sort(c / (n / (n + 5.0) * c + 1e-3 * 5.0 / (n + 5.0)))
    np.testing.assert_allclose(np.linalg.eigvalsh(np.cov(z, rowvar=False)), expected, rtol=1e-5, atol=1e-8)
    back = backend.to_numpy(bijector.forward(backend.constant(z)))
    np.testing.assert_allclose(back, draws, rtol=1e-6, atol=1e-8)
    # the draws moved: the pilot samples the conditional, it does not sit at the start
    assert np.all(np.ptp(draws, axis=0) > 0)


def test_the_pilot_length_keys_pilot_runs_only():
    pilot = field_level.Config.preset("quick", seed=3, **{**TINY, "bias_coordinates": "pilot", "n_bias_pilot": 50})
    # the pilot's chains are cached with the setting: another pilot length is another run
    other = field_level._setting_key(dataclass_replace(pilot, n_bias_pilot=60), "mock", "x")
    assert other != field_level._setting_key(pilot, "mock", "x")
    # ... while a joint run's key ignores the pilot length and the Gibbs-only settings
    joint = field_level.Config.preset("quick", seed=3, **TINY)
    assert (field_level._setting_key(dataclass_replace(joint, n_bias_pilot=60, bias_steps=3), "mock", "x")
            == field_level._setting_key(joint, "mock", "x"))


def test_fixed_bias_mock_samples_the_white_noise_alone_on_the_mocks_catalogue(study, tmp_path):
    config, root, _ = study
    # 60 warm-up iterations: 20 leave the tiny grid's adapted step far too long (nothing accepted). The forward
    # model computes in float32 inside these chains; the catalogue is still drawn in float64 (compared below).
    fixed = field_level.Config.preset("quick", seed=3, **{**TINY, "settings": ("mock_fixed_bias",), "n_warmup": 60,
                                                         "forward_dtype": "float32"})
    results = field_level.run(fixed, root / "suite", _out_with_the_fixtures_bias_fit(study, tmp_path), progress=False)
    s = results["settings"]["mock_fixed_bias"]
    with np.load(root / "out" / "bias_fit.npz") as f:
        theta_fit = f["theta"]
    with h5py.File(tmp_path / "out" / "mock_fixed_bias" / field_level.SAMPLES_FILE) as f, \
            h5py.File(root / "out" / "mock" / field_level.SAMPLES_FILE) as g:
        theta, omega = f["theta"][...], f["omega"][...]
        # the same catalogue as the joint mock's: drawn with the same seed and bias
        np.testing.assert_array_equal(f["data/halo_positions"][...], g["data/halo_positions"][...])
        np.testing.assert_array_equal(f["truth/omega"][...], g["truth/omega"][...])
    # the bias stays at the values the catalogue was drawn with; the field moves
    np.testing.assert_array_equal(theta, np.broadcast_to(theta_fit, theta.shape))
    assert np.all(np.ptp(omega.reshape(omega.shape[0], omega.shape[1], -1), axis=0).max(axis=-1) > 0)
    # only the power is diagnosed; a fixed bias has no ESS
    assert set(s["convergence"]["parameters"]) == {f"power_low_k[{i}]" for i in range(3)}
    assert s["sampler"]["gradients_per_ess_bias"] is None and s["sampler"]["bias_spread"] is None
    assert s["sampler"]["bias_fixed"] is True and s["sampler"]["acceptance_rate"] > 0.3
    report = (tmp_path / "out" / "report.md").read_text()
    assert "bias parameters known" in report and "float32 inside the chains" in report
    assert results["config"]["forward_dtype"] == "float32"


def test_the_bias_carry_keys_carried_runs_only():
    gibbs = field_level.Config.preset("quick", seed=3, **{**TINY, "sampler": "gibbs"})
    # the default is left out, so that keys written before the carry existed stand for it
    assert "bias_carry" not in field_level._setting_key(gibbs, "mock", "x")["config"]
    carried = field_level._setting_key(dataclass_replace(gibbs, bias_carry="npe_moments"), "mock", "x")
    assert carried["config"]["bias_carry"] == "npe_moments"


def test_the_forward_models_arithmetic_keys_float32_runs_only():
    joint = field_level.Config.preset("quick", seed=3, **TINY)
    assert "forward_dtype" not in field_level._setting_key(joint, "mock", "x")["config"]
    single = field_level._setting_key(dataclass_replace(joint, forward_dtype="float32"), "mock", "x")
    assert single["config"]["forward_dtype"] == "float32"


def test_the_head_keys_runs_other_than_the_papers_only():
    gibbs = field_level.Config.preset("quick", seed=3, **{**TINY, "sampler": "gibbs", "bias_kernel": "hmc"})
    assert "n_components" not in field_level._setting_key(gibbs, "mock", "x")["config"]
    one = field_level._setting_key(dataclass_replace(gibbs, n_components=1), "mock", "x")
    assert one["config"]["n_components"] == 1


def test_the_bias_metric_keys_warmup_runs_only():
    gibbs = field_level.Config.preset("quick", seed=3, **{**TINY, "sampler": "gibbs", "bias_kernel": "hmc",
                                                         "bias_coordinates": "local_linear"})
    assert "bias_metric" not in field_level._setting_key(gibbs, "mock", "x")["config"]
    warm = field_level._setting_key(dataclass_replace(gibbs, bias_metric="warmup"), "mock", "x")
    assert warm["config"]["bias_metric"] == "warmup"
    assert "field_metric" not in warm["config"]
    field = field_level._setting_key(dataclass_replace(gibbs, field_metric="warmup"), "mock", "x")
    assert field["config"]["field_metric"] == "warmup" and "bias_metric" not in field["config"]
    assert "metric_windows" not in field["config"]
    windows = field_level._setting_key(dataclass_replace(gibbs, field_metric="warmup", n_warmup=48, metric_windows=2),
                                       "mock", "x")
    assert windows["config"]["metric_windows"] == 2


def test_a_fixed_bias_settings_key_holds_only_what_its_chains_read():
    joint = field_level.Config.preset("quick", seed=3, **{**TINY, "n_warmup": 48})
    gibbs = dataclass_replace(joint, sampler="gibbs", bias_kernel="hmc", bias_steps=3, bias_carry="npe_moments",
                              bias_min_step_factor=0.5, bias_coordinates="local_linear", bias_metric="warmup",
                              field_metric="warmup", metric_windows=2, bias_scale_coordinate="log_scale")
    fixed = [field_level._setting_key(c, "mock_fixed_bias", "x") for c in (joint, gibbs)]
    assert fixed[0] == fixed[1]
    # with the defaults, the key every setting had before: cached fixed-bias results stay valid
    assert dict(fixed[0], setting="mock") == field_level._setting_key(joint, "mock", "x")
    # what it reads still keys it, and the bias's settings still key a setting that samples the bias
    assert field_level._setting_key(dataclass_replace(joint, n_warmup=64), "mock_fixed_bias", "x") != fixed[0]
    assert field_level._setting_key(joint, "mock", "x") != field_level._setting_key(gibbs, "mock", "x")


@pytest.mark.parametrize("windows", [1, 2, 3])
@pytest.mark.parametrize("extra", [0, 1, 300, 301])
def test_the_warmup_metric_stages_add_up_to_the_warmup(windows, extra):
    n_warmup = field_level.MIN_WARMUP_FOR_WARMUP_METRIC * (2 ** windows - 1) + extra
    stages, final = field_level._warmup_stages(n_warmup, windows)
    assert len(stages) == windows and sum(map(sum, stages)) + final == n_warmup and final >= n_warmup // 2
    assert min(min(stage) for stage in stages) >= field_level.MIN_WARMUP_FOR_WARMUP_METRIC // 4
    lengths = [sum(stage) for stage in stages]
    # each window twice the one before, to within the rounding of the cuts
    assert all(abs(b - 2 * a) <= 2 for a, b in zip(lengths, lengths[1:]))
    assert all(adapt - draws in (0, 1) for adapt, draws in stages)


def test_each_metric_window_hands_its_metrics_and_last_state_to_the_next(tmp_path, monkeypatch):
    """The windows' bookkeeping with the chains stood in for: each stage runs where the one before ended, in the
    metrics that stage's draws gave (the bias's from the start's coordinates), with its own seed and checkpoint,
    and one traced joint serves every stage."""
    from keras import ops

    from tfhalo import backend
    from tfhalo.field.precondition import k_shells, scales_from_draws
    from tfhalo.inference import Chains

    config = field_level.Config.preset("quick", seed=3, **{**TINY, "sampler": "gibbs", "bias_kernel": "hmc",
                                                          "bias_coordinates": "local_linear", "bias_metric": "warmup",
                                                          "field_metric": "warmup", "metric_windows": 2,
                                                          "n_warmup": 48})
    n_field, n_bias, offset = config.n_grid ** 3, 3, 7
    posterior = type("Posterior", (), {"n_field": n_field, "log_prob": staticmethod(lambda x: -ops.sum(x * x, -1))})
    rng = np.random.default_rng(5)
    calls = []

    def stand_in(config_, posterior_, state, field_scale, bias_bijector, offset_, checkpoint_dir, progress,
                 reduction=None, n_warmup=None, n_samples=None, seed=None, joint=None):
        s = config_.n_samples if n_samples is None else n_samples
        # each stage's draws wider than the last's, so that every stage's metrics differ
        draws = state + (1.0 + len(calls)) * rng.standard_normal((s,) + state.shape)
        diverging = np.zeros(draws.shape[:2], bool)
        diverging[0, 0] = True
        calls.append(dict(state=np.array(state), scale=np.array(field_scale), bijector=bias_bijector,
                          checkpoint_dir=checkpoint_dir, sweeps=(n_warmup, s), seed=seed, joint=joint, draws=draws))
        return Chains(samples=draws, sample_stats={"diverging": diverging}, seconds=1.5, n_gradient_evaluations=10,
                      config=None, step_size=0.1, inverse_mass_matrix=None, n_warmup_divergent=2)

    monkeypatch.setattr(field_level, "_gibbs_chains", stand_in)
    start_bijector = backend.tfp.bijectors.Shift(backend.constant(np.arange(n_bias, dtype=np.float64)))
    state0 = rng.standard_normal((config.n_chains, n_field + n_bias))
    scale0 = np.exp(rng.uniform(-1.0, 1.0, (config.n_grid,) * 3))
    chains, info = field_level._gibbs_chains_with_warmup_metric(config, posterior, state0, scale0, start_bijector,
                                                                offset, tmp_path, False)

    assert [c["sweeps"] for c in calls] == [(4, 4), (8, 8), (24, config.n_samples)]
    assert [c["seed"] for c in calls] == [config.chains_seed + offset + 2000, config.chains_seed + offset + 2100, None]
    assert [c["checkpoint_dir"] for c in calls] == [tmp_path / "warmup_metric", tmp_path / "warmup_metric_2",
                                                    tmp_path]
    assert calls[0]["joint"] is not None and all(c["joint"] is calls[0]["joint"] for c in calls)
    np.testing.assert_array_equal(calls[0]["state"], state0)
    probe = backend.constant(rng.standard_normal((4, n_bias)))
    assert calls[0]["bijector"] is start_bijector
    np.testing.assert_array_equal(calls[0]["scale"], scale0)
    for before, after in zip(calls, calls[1:]):
        np.testing.assert_array_equal(after["state"], before["draws"][-1])
        np.testing.assert_array_equal(after["scale"], scales_from_draws(before["scale"],
                                                                       before["draws"][..., :n_field])[0])
        want = field_level.bias_metric_from_draws(start_bijector, before["draws"][..., n_field:])
        np.testing.assert_allclose(backend.to_numpy(after["bijector"].forward(probe)),
                                   backend.to_numpy(want.forward(probe)), rtol=1e-12)
    # the windows' seconds, gradients and divergences (each window's kept sweeps are warm-up) join the run's
    assert (chains.seconds, chains.n_gradient_evaluations, chains.n_warmup_divergent) == (4.5, 30, 2 + 2 * (2 + 1))
    for block in ("bias_metric", "field_metric"):
        assert [(w["sweeps"], w["draws_per_chain"]) for w in info[block]["windows"]] == [(8, 4), (16, 8)]
        assert (info[block]["sweeps"], info[block]["draws_per_chain"], info[block]["seconds"]) == (24, 8, 3.0)
    labels, _, counts = k_shells(config.n_grid)
    by_shell = np.bincount(labels.ravel(), weights=(calls[-1]["scale"] / scale0).ravel()) / counts
    np.testing.assert_allclose(info["field_metric"]["spread_by_shell"], by_shell[1:], rtol=1e-12)
    z = backend.to_numpy(start_bijector.inverse(backend.constant(calls[1]["draws"][..., n_field:].reshape(-1, n_bias))))
    spread = np.sqrt(np.linalg.eigvalsh(np.cov(z, rowvar=False)))
    np.testing.assert_allclose([info["bias_metric"]["spread_min"], info["bias_metric"]["spread_max"]],
                               [spread.min(), spread.max()], rtol=1e-10)


def test_the_report_names_each_metric_window():
    cfg = dict(sampler="gibbs", bias_carry="none", bias_steps=1, bias_kernel="hmc", bias_metric="warmup",
               field_metric="warmup")
    one = field_level._sampler_text(cfg)
    assert "over the first half of the warm-up)" in one and "windows" not in one
    two = field_level._sampler_text(dict(cfg, metric_windows=2))
    assert two.count("over the first half of the warm-up (2 windows, each twice the last)") == 2
    metric = dict(sweeps=24, draws_per_chain=8, windows=[dict(sweeps=8, draws_per_chain=4),
                                                         dict(sweeps=16, draws_per_chain=8)])
    assert field_level._windows_text(metric) == ("2 windows of 8+16 sweeps, re-estimated after each from its last "
                                                 "4/8 draws per chain")
    assert field_level._windows_text(dict(metric, windows=metric["windows"][1:])) == "the last 8 per chain"


def test_bias_metric_from_draws_whitens_them_and_keeps_the_starts_widths_where_they_did_not_go(study):
    """Against NumPy: theta = start(mean + chol(Sigma) z), Sigma = n/(n+5) cov + 5/(n+5) I in the start's
    coordinates. Draws confined to a plane leave the other directions at sqrt(5/(n+5)) of the start's widths."""
    from tfhalo import backend

    posterior, state, theta = _nbody_posterior(study)
    start = field_level.local_linear_bias_bijector(posterior, state)
    rng = np.random.default_rng(5)
    n, p = 300, theta.size
    z_start = np.zeros((n, p))
    z_start[:, :2] = rng.normal(size=(n, 2)) * [3.0, 0.5] + [0.2, -0.1]    # explored: 2 of the p directions
    draws = backend.to_numpy(start.forward(backend.constant(z_start))).reshape(100, 3, p)
    metric = field_level.bias_metric_from_draws(start, draws)
    sigma = n / (n + 5.0) * np.cov(z_start, rowvar=False) + 5.0 / (n + 5.0) * np.eye(p)
    u = rng.normal(size=(4, p))
    want = backend.to_numpy(start.forward(backend.constant(z_start.mean(0) + u @ np.linalg.cholesky(sigma).T)))
    np.testing.assert_allclose(backend.to_numpy(metric.forward(backend.constant(u))), want, rtol=1e-7, atol=1e-9)
    w = backend.to_numpy(metric.inverse(backend.constant(draws.reshape(-1, p))))
    np.testing.assert_allclose(w.mean(0), 0.0, atol=1e-7)
    chol_inv = np.linalg.inv(np.linalg.cholesky(sigma))
    np.testing.assert_allclose(np.cov(w, rowvar=False), chol_inv @ np.cov(z_start, rowvar=False) @ chol_inv.T,
                               atol=1e-7)
    # an unexplored direction: the start's unit width shrunk by the weight of the identity
    other = backend.to_numpy(metric.forward(backend.constant(np.eye(p)[[5]])))
    back = backend.to_numpy(start.inverse(backend.constant(other)))[0] - z_start.mean(0)
    assert back[5] == pytest.approx(np.sqrt(5.0 / (n + 5.0)), rel=1e-6)
    with pytest.raises(ValueError, match=r"theta_draws must be \(\.\.\., P\) with at least 2 draws"):
        field_level.bias_metric_from_draws(start, draws[0, 0])
    with pytest.raises(ValueError, match="theta_draws must be finite"):
        field_level.bias_metric_from_draws(start, np.where(draws == draws[0, 0, 0], np.nan, draws))


def test_the_bias_step_factor_keys_jittered_runs_only():
    gibbs = field_level.Config.preset("quick", seed=3, **{**TINY, "sampler": "gibbs", "bias_kernel": "hmc"})
    assert "bias_min_step_factor" not in field_level._setting_key(gibbs, "mock", "x")["config"]
    jittered = field_level._setting_key(dataclass_replace(gibbs, bias_min_step_factor=0.25), "mock", "x")
    assert jittered["config"]["bias_min_step_factor"] == 0.25


def test_the_bias_recovery_benchmark_fits_mocks_of_the_studys_truth(study, tmp_path, monkeypatch, capsys):
    from tests.helpers.scripts import load_script

    config, root, _ = study
    out = root / "out"
    bench = load_script("benchmarks/bias_recovery.py", monkeypatch)
    target = tmp_path / "recovery.json"
    assert bench.main([str(out), "--mocks", "2", "--first-seed", "7", "--out", str(target)]) == 0
    r = json.loads(target.read_text())
    with h5py.File(out / "mock" / field_level.SAMPLES_FILE) as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["theta"].attrs["names"]]
    assert r["parameters"] == [name.split("/", 1)[-1] for name in names]
    assert r["parameters"][4] == "npe/bias[0]"
    theta = np.load(out / "bias_fit.npz")["theta"]
    np.testing.assert_allclose(r["theta"], theta)
    est = np.asarray(r["estimates"])
    assert est.shape == (2, 17) and r["seeds"] == [7, 8]
    np.testing.assert_allclose(r["mean_offset"], (est - theta).mean(axis=0), rtol=1e-12, atol=1e-12)
    assert "| parameter | generating | mean offset |" in capsys.readouterr().out
    # A folder without a finished study is refused before any fit, and nothing is written.
    with pytest.raises(SystemExit) as exit_info:
        bench.main([str(tmp_path), "--out", str(tmp_path / "other.json")])
    assert exit_info.value.code == 2
    assert "results.json is missing. Received: out=" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
    # A study whose recorded config is not a valid one is refused the same way.
    bad = tmp_path / "bad"
    (bad / "mock").mkdir(parents=True)
    study_json = json.loads((out / "results.json").read_text())
    study_json["config"]["temperature"] = 2
    (bad / "results.json").write_text(json.dumps(study_json))
    (bad / "mock" / field_level.SAMPLES_FILE).symlink_to(out / "mock" / field_level.SAMPLES_FILE)
    (bad / "bias_fit.npz").symlink_to(out / "bias_fit.npz")
    with pytest.raises(SystemExit) as exit_info:
        bench.main([str(bad), "--out", str(tmp_path / "other.json")])
    assert exit_info.value.code == 2
    assert "holds no valid field-level config (Unknown field-level Config fields ['temperature']" in \
        capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
    # The study's own files are inputs: never overwritten.
    fit = out / "bias_fit.npz"
    before = fit.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([str(out), "--out", str(fit)])
    assert exit_info.value.code == 2
    assert "out must not be an input: it is a file inside study_out=" in capsys.readouterr().err
    assert fit.read_bytes() == before


def test_a_finished_study_reads_back_as_the_run_built_it(study, tmp_path):
    config, root, _ = study
    out = root / "out"
    back = field_level.load_finished_study(out, "mock")
    assert back.config == config
    np.testing.assert_array_equal(back.omega_true, field_level.truth_white_noise(back.simulation, config.n_grid))
    np.testing.assert_array_equal(back.theta_fit, np.load(out / "bias_fit.npz")["theta"])
    model, forward = field_level.bias_model(config), field_level.forward_model(config, back.simulation)
    # The mock the study drew (a seeded draw from the model at the truth), recomputed.
    drawn = field_level._catalogue(config, "mock", back.simulation, forward, model, back.omega_true, back.theta_fit)
    np.testing.assert_allclose(back.catalogue.positions, drawn.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.catalogue.ln_mass, drawn.ln_mass, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back.catalogue.halo_voxel, drawn.halo_voxel)
    assert len(back.parameter_names) == 17 and back.parameter_names[4] == "npe/bias[0]"
    with pytest.raises(ValueError, match="setting must be one of .* Received: setting='real'"):
        field_level.load_finished_study(out, "real")
    with pytest.raises(ValueError, match=r"results.json is missing. Received: out="):
        field_level.load_finished_study(tmp_path, "mock")


def test_the_scale_coordinate_benchmark_samples_the_bias_in_both_coordinates(study, tmp_path, monkeypatch, capsys):
    from tests.helpers.scripts import load_script

    _, root, _ = study
    bench = load_script("benchmarks/bias_scale_coordinate.py", monkeypatch)
    target = tmp_path / "scale.json"
    assert bench.main([str(root / "out"), "--n-warmup", "20", "--n-samples", "10", "--max-tree-depth", "3",
                       "--out", str(target), "--no-progress", "--no-xla"]) == 0
    r = json.loads(target.read_text())
    assert [row["scale_coordinate"] for row in r["rows"]] == list(field_level.BIAS_SCALE_COORDINATES)
    for row in r["rows"]:
        assert row["draws"] == 20 and 1 <= row["steps_per_iteration"] <= 2**3 and row["min_bulk_ess"] > 0
        assert row["gradients_per_ess"] == pytest.approx(20 * row["steps_per_iteration"] / row["min_bulk_ess"])
        assert row["ratio_to_curvature"] == pytest.approx(row["gradients_per_ess"] / r["rows"][0]["gradients_per_ess"])
    assert "| scale coordinate | leapfrog steps / iteration |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        bench.main([str(root / "out"), "--chains", "1", "--out", str(tmp_path / "other.json")])
    assert exit_info.value.code == 2
    assert "chains must be at least 2. Received: chains=1" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
    # The study's own files are inputs: never overwritten.
    results = root / "out" / "results.json"
    before = results.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([str(root / "out"), "--out", str(results)])
    assert exit_info.value.code == 2
    assert "out must not be an input: it is a file inside study_out=" in capsys.readouterr().err
    assert results.read_bytes() == before
