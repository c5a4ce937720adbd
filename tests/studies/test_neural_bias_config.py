"""neural_bias.Config and the experiments/neural_bias.py shell: every argument is refused before any work."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tfhalo.studies import neural_bias
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("field, value, match", [
    ("n_warmup", -5, "n_warmup must be at least 0. Received: n_warmup=-5"),
    ("n_warmup", 5, r"n_warmup must be 0 \(no adaptation\) or at least 20 .* Received: n_warmup=5"),
    ("n_samples", 2,
     r"n_samples must be at least 4 \(split R-hat and ESS need 4 draws per chain\). Received: n_samples=2"),
    ("leapfrog_steps", 0, "leapfrog_steps must be at least 1. Received: leapfrog_steps=0"),
    ("map_steps", 0, "map_steps must be at least 1. Received: map_steps=0"),
    ("map_starts", 0, "map_starts must be at least 1. Received: map_starts=0"),
    ("n_chains", 0, "n_chains must be at least 1. Received: n_chains=0"),
    ("n_grid", 2.7, "n_grid must be an integer. Received: n_grid=2.7"),
    ("n_grid", 2, "n_grid must be at least 3. Received: n_grid=2"),
    ("n_sims", 1, "n_sims must be at least 2. Received: n_sims=1"),
    ("n_components", 0, "n_components must be at least 1. Received: n_components=0"),
    ("max_tree_depth", 0, "max_tree_depth must be at least 1. Received: max_tree_depth=0"),
    ("target_accept", 1.0, r"target_accept must lie in \(0, 1\). Received: target_accept=1.0"),
    ("target_accept", float("nan"), "target_accept must be a finite number. Received: target_accept=nan"),
    ("step_scale", 1.2, r"step_scale must lie in \(0, 1\] .*Received: step_scale=1.2"),
    ("pilot_target_accept", 0.0, r"pilot_target_accept must lie in \(0, 1\). Received: pilot_target_accept=0.0"),
    ("pilot_target_accept", "x", "pilot_target_accept must be a number. Received: pilot_target_accept='x'"),
    ("kernel", "mala", r"kernel must be one of \('nuts', 'hmc', 'chees'\). Received: kernel='mala'"),
    ("field", "ics", "field must be one of .* Received: field='ics'"),
    ("sample_field", "x", "sample_field must be one of .* Received: sample_field='x'"),
    ("sim_preset", "huge", "sim_preset must be one of .* Received: sim_preset='huge'"),
    ("threshold_particles", -1.0, "threshold_particles must be positive. Received: threshold_particles=-1.0"),
    ("threshold_mass", 0.0, "threshold_mass must be positive. Received: threshold_mass=0.0"),
    ("sampler_seed", -1, "sampler_seed must be at least 0. Received: sampler_seed=-1"),
    ("jit_compile", "yes", "jit_compile must be True or False. Received: jit_compile='yes'"),
    ("devices", 0, "devices must be at least 1. Received: devices=0"),
    ("devices", 3, r"n_chains must be a multiple of devices=3"),
    ("chain_groups", 0, "chain_groups must be at least 1. Received: chain_groups=0"),
    ("chain_groups", 3, r"n_chains must be a multiple of chain_groups=3"),
    ("devices", 2, r"chain_groups > 1 .* use one of them"),
])
def test_every_field_is_checked_on_construction(field, value, match):
    with pytest.raises(ValueError, match=match):
        neural_bias.Config.preset("quick", **{field: value})


def test_preset_names_seed_and_unknown_fields_are_checked():
    with pytest.raises(ValueError, match="preset must be one of .* Received: preset='fast'"):
        neural_bias.Config.preset("fast")
    with pytest.raises(ValueError, match="seed must be at least 0. Received: seed=-3"):
        neural_bias.Config.preset("quick", seed=-3)
    with pytest.raises(ValueError, match=r"unknown Config fields \['temperatures'\]"):
        neural_bias.Config.preset("quick", temperatures=4)
    with pytest.raises(ValueError, match="exactly one of threshold_particles and threshold_mass"):
        neural_bias.Config(threshold_particles=50.0, threshold_mass=1e12)


def test_config_is_frozen_round_trips_and_thresholds_replace_each_other():
    cfg = neural_bias.Config.preset("quick", seed=3, n_samples=500)
    assert (cfg.name, cfg.seed, cfg.n_samples, cfg.chains_seed) == ("quick", 3, 500, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_samples = 10
    assert neural_bias.Config(**cfg.to_dict()) == cfg
    paper = neural_bias.Config.preset("paper", threshold_particles=30)
    assert paper.threshold_mass is None and paper.threshold_particles == 30.0
    quick = neural_bias.Config.preset("quick", threshold_mass=2e12)
    assert quick.threshold_particles is None and quick.threshold_mass == 2e12
    cfg = neural_bias.Config.preset("quick", sampler_seed=7)
    sampler = cfg.sampler_config()
    assert (sampler.seed, sampler.kernel, sampler.num_chains) == (7, cfg.kernel, cfg.n_chains)
    pilot = cfg.pilot_config()
    assert (pilot.num_warmup, pilot.num_samples, pilot.kernel) == (cfg.n_pilot, cfg.n_pilot, cfg.kernel)
    assert pilot.seed != sampler.seed
    assert neural_bias.Config.preset("quick", n_pilot=0).pilot_config() is None
    with pytest.raises(ValueError, match="n_pilot=5"):
        neural_bias.Config.preset("quick", n_pilot=5)


def test_quick_preset_is_the_agreed_sampler_and_paper_preset_the_papers_set_up():
    """Quick: NUTS after a pilot, 4 chains, target acceptance 0.995 (no divergences); paper: 64^3 voxels of ~3.9 Mpc/h, M_th = 2e12."""
    from tfhalo.sim import PRESETS as SIM_PRESETS

    quick = neural_bias.Config.preset("quick")
    assert (quick.kernel, quick.max_tree_depth, quick.n_chains, quick.target_accept) == ("nuts", 10, 4, 0.995)
    # One chain per group: no core waits for another chain's trajectory; the warm-up pools all 4 chains.
    assert quick.chain_groups == 4 and [g.num_chains for g in quick.sampler_config().group_configs()] == [1] * 4
    assert quick.pool_warmup and quick.sampler_config().pool_warmup
    assert neural_bias.Config.preset("quick", pool_warmup=False).sampler_config().pool_warmup is False
    # The final chains take 0.7 of the adapted step; the pilot, whose draws only estimate a covariance,
    # takes its whole adapted step at a lower target.
    assert quick.sampler_config().step_scale == 0.7 and quick.pilot_config().step_scale == 1.0
    assert quick.pilot_config().target_accept == 0.9 and quick.sampler_config().target_accept == 0.995
    assert neural_bias.Config.preset("quick", pilot_target_accept=None).pilot_config().target_accept == 0.995
    # ... and keeps one chain per group when only the number of chains changes.
    assert neural_bias.Config.preset("quick", n_chains=2).chain_groups == 2
    assert neural_bias.Config.preset("quick", n_chains=6, chain_groups=3).chain_groups == 3
    # Every parameter's bulk and tail ESS must be able to reach 400 from the kept draws.
    assert quick.n_pilot >= 20 and quick.n_chains * quick.n_samples >= 4 * 400
    assert quick.n_components == 2
    paper = neural_bias.Config.preset("paper")
    sim = SIM_PRESETS[paper.sim_preset]
    assert paper.n_grid == 64 and sim.box_size / paper.n_grid == pytest.approx(3.9, abs=0.05)
    assert paper.threshold_mass == 2e12 and paper.n_components == 2
    particle_mass = sim.cosmology.rho_mean * (sim.box_size / sim.n_side) ** 3
    assert paper.threshold_mass / particle_mass >= 50


@pytest.fixture(scope="module")
def script():
    return load_script("experiments/neural_bias.py")


@pytest.mark.parametrize("extra, name", [
    (["--n-burnin", "-5"], "n_warmup"),
    (["--n-warmup", "-5"], "n_warmup"),
    (["--n-samples", "2"], "n_samples"),
    (["--leapfrog-steps", "0"], "leapfrog_steps"),
    (["--map-steps", "0"], "map_steps"),
    (["--kernel", "mala"], "kernel"),
    (["--step-scale", "0"], "step_scale"),
    (["--preset", "fast"], "preset"),
    (["--threshold-mass", "-1"], "threshold_mass"),
])
def test_script_reports_bad_arguments_argparse_style_before_writing(script, tmp_path, capsys, extra, name):
    code = script.main(["--suite", str(tmp_path / "suite"), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert "usage:" in err and f"error: {name} must" in err and "Traceback" not in err
    assert not (tmp_path / "suite").exists() and not (tmp_path / "out").exists()


def test_standard_error_of_a_sum_matches_numpy():
    rng = np.random.default_rng(0)
    terms = rng.normal(loc=0.3, scale=2.0, size=1000)
    assert neural_bias.sum_standard_error(terms) == pytest.approx(np.sqrt(1000) * np.std(terms, ddof=1), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 finite values"):
        neural_bias.sum_standard_error([1.0, np.nan])


def test_heldout_log_predictive_matches_numpy_and_rejects_bad_shapes():
    rng = np.random.default_rng(1)
    lnl = -5000.0 + rng.normal(scale=3.0, size=(50, 4))
    got = neural_bias.heldout_log_predictive(lnl)
    # Shifted by the max, the mean of exp is safe in float64.
    shift = lnl.max()
    assert got["all_chains"] == pytest.approx(shift + np.log(np.mean(np.exp(lnl - shift))), rel=0, abs=1e-9)
    per_chain = [lnl[:, c].max() + np.log(np.mean(np.exp(lnl[:, c] - lnl[:, c].max()))) for c in range(4)]
    np.testing.assert_allclose(got["per_chain"], per_chain, rtol=0, atol=1e-9)
    assert got["between_chain_standard_error"] == pytest.approx(np.std(per_chain, ddof=1) / 2.0, rel=1e-9)
    assert got["draws_per_chain"] == 50
    with pytest.raises(ValueError, match=r"Received shape \(3,\)"):
        neural_bias.heldout_log_predictive(np.zeros(3))


def test_script_exit_code_is_2_in_a_real_process(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "neural_bias.py"), "--suite",
                           str(tmp_path / "suite"), "--out", str(tmp_path / "out"), "--n-samples", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert ("error: n_samples must be at least 4 (split R-hat and ESS need 4 draws per chain). "
            "Received: n_samples=2") in proc.stderr
    assert not (tmp_path / "out").exists()


def test_run_refuses_bad_paths_before_any_work(tmp_path):
    config = neural_bias.Config.preset("quick")
    with pytest.raises(ValueError, match="out must be a non-empty directory path. Received: out=''"):
        neural_bias.run(config, tmp_path / "suite", "", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out must be a directory. Received: out=.* \\(a file\\)"):
        neural_bias.run(config, tmp_path / "suite", tmp_path / "file", progress=False)
    with pytest.raises(ValueError, match="config must be a neural_bias.Config. Received: config=dict"):
        neural_bias.run(config.to_dict(), tmp_path / "suite", tmp_path / "out", progress=False)
    assert not (tmp_path / "suite").exists() and not (tmp_path / "out").exists()


def test_a_diagnostic_written_as_null_fails_its_criterion():
    """results.json writes a non-computable R-hat / ESS as null; read back it must fail, not crash."""
    c = dict(max_rhat=None, min_ess_bulk=None, min_ess_tail=500.0, n_divergent=0, n_draws=20, n_chains=2)
    failures = neural_bias._convergence_failures(neural_bias._convergence_numbers(c))
    assert [f.split(":")[0] for f in failures] == ["R-hat", "bulk ESS"]


def test_kernels_are_the_samplers_and_chees_needs_two_chains_per_group():
    from tfhalo.inference import sampler

    # The study takes exactly the sampler's kernels: its config leaves that check to the sampler's.
    assert sampler.KERNELS == tuple(sampler.KERNEL_NAMES)
    for kernel in sampler.KERNELS:
        assert neural_bias.Config.preset("quick", kernel=kernel, chain_groups=2).kernel == kernel
    cfg = neural_bias.Config.preset("quick", kernel="chees", chain_groups=2)
    assert cfg.sampler_config().kernel == "chees" and cfg.sampler_config().num_chains == 4
    # The quick preset runs one chain per group: ChEES adapts across the chains of a group.
    with pytest.raises(ValueError, match="at least 2 chains per batch.*chain_groups=4"):
        neural_bias.Config.preset("quick", kernel="chees")


def test_the_study_settings_load_no_tfp_substrate():
    import subprocess
    import sys

    code = ("import sys; from tfhalo.studies import neural_bias; neural_bias.Config.preset('quick', kernel='hmc'); "
            "import tfhalo.inference as inf; inf.SamplerConfig(kernel='nuts'); "
            "bad = sorted(m for m in sys.modules if m.startswith('tensorflow_probability')); assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("study", ["neural_bias", "field_level"])
def test_sampler_fields_are_normalised_by_the_samplers_checks(study):
    # The sampler's own checks accept 1000.0 for a count and NumPy scalars; the study's config
    # then holds the plain Python values, so that it stays JSON-able and fingerprints alike.
    import json

    from tfhalo.studies import field_level

    module = {"neural_bias": neural_bias, "field_level": field_level}[study]
    plain = module.Config.preset("quick")
    odd = module.Config.preset("quick", n_chains=np.int64(plain.n_chains), n_warmup=float(plain.n_warmup),
                               n_samples=np.int32(plain.n_samples), target_accept=np.float32(0.5),
                               leapfrog_steps=float(plain.leapfrog_steps))
    for field in ("n_chains", "n_warmup", "n_samples", "leapfrog_steps"):
        assert type(getattr(odd, field)) is int and getattr(odd, field) == getattr(plain, field), field
    assert type(odd.target_accept) is float and odd.target_accept == 0.5
    json.dumps(odd.to_dict())
