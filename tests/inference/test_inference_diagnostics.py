"""ArviZ output: InferenceData round trip through NetCDF, arviz.summary / plot_trace, convergence checks."""

import json

import arviz as az
import numpy as np
import pytest

import tfhalo.inference as inf
from tfhalo.inference.sampler import Chains


def _chains(samples, seed=0):
    s, c, _ = samples.shape
    rng = np.random.default_rng(seed)
    stats = dict(diverging=np.zeros((s, c), bool), energy=rng.normal(size=(s, c)),
                 acceptance_rate=rng.uniform(size=(s, c)), step_size=np.full((s, c), 0.3),
                 n_steps=np.full((s, c), 7, np.int32), lp=rng.normal(size=(s, c)),
                 tree_depth=np.full((s, c), 3))
    return Chains(samples=samples, sample_stats=stats, seconds=1.5, n_gradient_evaluations=1234,
                  config=inf.SamplerConfig(), step_size=0.3, inverse_mass_matrix=np.ones(samples.shape[2]))


def test_netcdf_round_trip_and_arviz_summary(tmp_path):
    rng = np.random.default_rng(0)
    chains = _chains(rng.normal(size=(200, 4, 3)))
    names = ["alpha", "beta", "gamma"]
    idata = chains.to_inference_data(parameter_names=names, map_estimate=[0.1, 0.2, 0.3])
    assert idata.posterior["theta"].dims == ("chain", "draw", "parameter")
    path = inf.save_inference_data(idata, tmp_path / "out" / "posterior.nc")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["posterior.nc"]  # no temporary left
    loaded = inf.load_inference_data(path)
    np.testing.assert_array_equal(loaded.posterior["theta"].values, chains.samples.transpose(1, 0, 2))
    assert list(loaded.posterior["parameter"].values) == names
    for k, v in chains.sample_stats.items():
        np.testing.assert_array_equal(loaded.sample_stats[k].values, v.T)
    assert loaded.sample_stats["diverging"].dtype == bool
    np.testing.assert_array_equal(loaded.constant_data["map"].values, [0.1, 0.2, 0.3])
    assert json.loads(loaded.posterior.attrs["sampler_config"])["kernel"] == "nuts"

    table = az.summary(loaded, round_to="none")
    assert list(table.index) == ["theta[alpha]", "theta[beta]", "theta[gamma]"]
    summary = inf.convergence_summary(loaded)
    for label, row in summary["parameters"].items():
        for ours, theirs in (("rhat", "r_hat"), ("ess_bulk", "ess_bulk"), ("ess_tail", "ess_tail"),
                             ("mcse_mean", "mcse_mean"), ("mean", "mean"), ("sd", "sd")):
            assert row[ours] == pytest.approx(table.loc[label, theirs], rel=1e-12)
    # Independent draws: converged, ESS about the number of draws.
    assert summary["converged"] and summary["n_chains"] == 4 and summary["n_draws"] == 200
    assert summary["min_ess_bulk"] > 400 and summary["max_rhat"] < 1.01
    json.dumps(summary)

    # Our own output is replaced; any other file is not.
    inf.save_inference_data(idata, path)
    other = tmp_path / "simulation.h5"
    other.write_bytes(b"not netcdf")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        inf.save_inference_data(idata, other)
    assert other.read_bytes() == b"not netcdf"
    with pytest.raises(FileNotFoundError):
        inf.load_inference_data(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="not an ArviZ NetCDF file"):
        inf.load_inference_data(other)


def test_plot_trace_works_on_the_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idata = _chains(np.random.default_rng(1).normal(size=(50, 2, 2))).to_inference_data()
    loaded = inf.load_inference_data(inf.save_inference_data(idata, tmp_path / "p.nc"))
    axes = az.plot_trace(loaded, var_names=["theta"], compact=False)
    assert axes.shape == (2, 2)
    plt.close("all")


def test_variables_split_the_flat_vector():
    samples = np.random.default_rng(2).normal(size=(10, 2, 7))
    idata = _chains(samples).to_inference_data(variables={"field": (slice(0, 6), (2, 3)), "bias": ([6], (1,))})
    field = idata.posterior["field"].values
    assert field.shape == (2, 10, 2, 3)
    np.testing.assert_array_equal(field[1, 4], samples[4, 1, :6].reshape(2, 3))
    np.testing.assert_array_equal(idata.posterior["bias"].values[..., 0], samples[..., 6].T)
    s = inf.convergence_summary(idata, var_names=["bias"])
    assert list(s["parameters"]) == ["bias[0]"]


def test_convergence_summary_flags_a_stuck_chain_and_divergences():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(400, 4, 3))
    samples[:, 0, 1] += 3.0  # one chain elsewhere in parameter 1
    chains = _chains(samples)
    s = inf.convergence_summary(chains.to_inference_data())
    assert s["parameters"]["theta[1]"]["rhat"] > 1.1 and s["parameters"]["theta[0]"]["rhat"] < 1.01
    assert s["max_rhat"] == s["parameters"]["theta[1]"]["rhat"] and not s["converged"]
    clean = _chains(rng.normal(size=(400, 4, 3)))
    clean.sample_stats["diverging"][5, 2] = True
    s = inf.convergence_summary(clean.to_inference_data())
    assert s["n_divergent"] == 1 and s["max_rhat"] < 1.01 and not s["converged"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(parameter_names=["a", "b"]), "parameter_names must be 3 distinct names"),
    (dict(parameter_names=["a", "a", "b"]), "parameter_names must be 3 distinct names"),
    (dict(map_estimate=[0.0, np.nan, 1.0]), r"map_estimate must be a finite \(3,\) vector"),
    (dict(variables={"x": (slice(0, 2), (3,))}), r"variables\['x'\] has 2 indices but shape \(3,\)"),
    (dict(variables={"x": ([0, 5], (2,))}), r"variables\['x'\] must lie in \[0, 3\)"),
    (dict(variables={"2x": ([0], (1,))}), "variables keys must be identifiers"),
    (dict(variables={"x": ([0], (1,))}, parameter_names=["a", "b", "c"]), "not both"),
])
def test_to_inference_data_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _chains(np.zeros((10, 2, 3))).to_inference_data(**kwargs)


def test_convergence_summary_refuses_too_few_draws_and_bad_names():
    idata = az.from_dict(posterior={"x": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="at least 4 draws per chain"):
        inf.convergence_summary(idata)
    idata = _chains(np.random.default_rng(0).normal(size=(10, 2, 3))).to_inference_data()
    with pytest.raises(ValueError, match="var_names must name posterior variables"):
        inf.convergence_summary(idata, var_names=["nope"])
    with pytest.raises(ValueError, match="idata must be an arviz.InferenceData"):
        inf.convergence_summary({"posterior": None})


def test_every_exported_name_resolves_to_its_home_module():
    import tfhalo.inference as inf

    for name in inf.__all__:
        value = getattr(inf, name)
        assert value.__module__.startswith("tfhalo.inference."), (name, value.__module__)
    assert set(inf.__all__) <= set(dir(inf))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        inf.not_a_name


def test_posterior_contraction_against_numpy_and_its_sampling_error():
    rng = np.random.default_rng(7)
    widths, prior = np.array([0.5, 3.0, 6.0, 9.5]), np.array([10.0, 10.0, 10.0, 10.0])
    n = 4000
    draws = rng.normal(1.0, widths, size=(n // 2, 2, 4))                 # (S, C, P)
    truth = np.array([1.0, -2.0, 5.0, 0.0])
    mcse_mean, mcse_sd = widths / np.sqrt(n), widths / np.sqrt(2 * (n - 1))
    c = inf.posterior_contraction(draws, 10.0, truth=truth, mcse_mean=mcse_mean, mcse_sd=mcse_sd)
    flat = draws.reshape(-1, 4)
    sd = flat.std(axis=0, ddof=1)
    np.testing.assert_allclose(c["posterior_sd"], sd, rtol=1e-12)
    np.testing.assert_allclose(c["contraction"], 1 - sd**2 / prior**2, rtol=1e-12)
    np.testing.assert_allclose(c["z"], (truth - flat.mean(axis=0)) / sd, rtol=1e-12)
    np.testing.assert_allclose(c["contraction_se"], 2 * sd * mcse_sd / prior**2, rtol=1e-12)
    np.testing.assert_allclose(c["z_se"], mcse_mean / sd, rtol=1e-12)
    # iid draws: the estimate lies within a few of its propagated standard errors of 1 - s^2 / sigma^2
    err = np.abs(np.asarray(c["contraction"]) - (1 - widths**2 / prior**2)) / np.asarray(c["contraction_se"])
    assert np.all(err < 4.5), err
    z_true = (truth - 1.0) / widths
    assert np.all(np.abs(np.asarray(c["z"]) - z_true) < 4.5 * np.asarray(c["z_se"]) * np.maximum(1, np.abs(z_true)))
    # without the optional arguments their entries are None; a scalar prior equals the per-parameter one
    bare = inf.posterior_contraction(draws, prior)
    assert bare["z"] is bare["z_se"] is bare["contraction_se"] is None
    assert bare["contraction"] == c["contraction"]
    # ArviZ's NaN MCSE (a chain that did not move) stays NaN in the propagated errors, nothing else
    nan_se = inf.posterior_contraction(draws, prior, truth=truth, mcse_mean=[np.nan, 0.1, 0.1, 0.1],
                                       mcse_sd=[0.1, np.nan, 0.1, 0.1])
    assert np.isnan(nan_se["z_se"][0]) and np.isnan(nan_se["contraction_se"][1])
    assert np.all(np.isfinite(np.delete(nan_se["z_se"], 0))) and np.all(np.isfinite(np.delete(nan_se["contraction_se"], 1)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(draws=np.array([[0.0, np.nan], [1.0, 2.0]])), r"draws must be finite"),
    (dict(draws=np.zeros((1, 3))), r"at least 2 draws. Received: draws.shape=\(1, 3\)"),
    (dict(draws=np.zeros(5)), r"Received: draws.shape=\(5,\)"),
    (dict(prior_sd=0.0), r"prior_sd must be positive. Received: prior_sd=0.0"),
    (dict(prior_sd=[1.0, 2.0]), r"prior_sd must be a scalar or one value per parameter \(3\). Received: prior_sd.shape=\(2,\)"),
    (dict(truth=[1.0, 2.0]), r"truth must be a scalar or one value per parameter \(3\). Received: truth.shape=\(2,\)"),
    (dict(truth=1.0), r"truth must be \(P,\) with P = 3. Received: truth.shape=\(\)"),
    (dict(truth=[0.0, np.inf, 0.0]), r"truth must be finite"),
    (dict(mcse_sd=[0.1, np.inf, 0.1]), r"mcse_sd must be finite"),
    (dict(mcse_mean=[0.1, -0.1, np.nan], truth=[0.0, 0.0, 0.0]), r"mcse_mean must be non-negative"),
    (dict(mcse_mean=[0.1, 0.1]), r"mcse_mean must be a scalar or one value per parameter \(3\)"),
])
def test_posterior_contraction_refuses_bad_input(kwargs, match):
    args = dict(draws=np.random.default_rng(0).normal(size=(10, 3)), prior_sd=10.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        inf.posterior_contraction(**args)
