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
