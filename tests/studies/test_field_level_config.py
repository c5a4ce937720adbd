"""field_level.Config and the experiments/field_level.py shell: every argument is refused before any work."""

import dataclasses

import numpy as np
import pytest

from tfhalo.studies import field_level
from tests.helpers.field_level import joint_quick
from tests.helpers.scripts import load_script


@pytest.mark.parametrize("field, value, match", [
    ("n_grid", 2, "n_grid must be at least 4. Received: n_grid=2"),
    ("n_grid", 24, r"n_grid must divide the simulation's n_side \(128\). Received: n_grid=24"),
    ("n_side", 2.5, "n_side must be an integer. Received: n_side=2.5"),
    ("box_size", -1.0, "box_size must be positive. Received: box_size=-1.0"),
    ("threshold_mass", 0.0, "threshold_mass must be positive. Received: threshold_mass=0.0"),
    ("order", 3, "order must be at most 2. Received: order=3"),
    ("settings", ("mock", "mock"), "settings must be distinct"),
    ("settings", ("truth",), "settings must be one of .* Received: settings='truth'"),
    ("start", "zero", "start must be one of .* Received: start='zero'"),
    ("preconditioner", "dense", "preconditioner must be one of .* Received: preconditioner='dense'"),
    ("bias_coordinates", "flow", "bias_coordinates must be one of .* Received: bias_coordinates='flow'"),
    ("n_samples", 10, "n_samples must be at least 20. Received: n_samples=10"),
    ("n_warmup", -1, "n_warmup must be at least 0. Received: n_warmup=-1"),
    ("n_warmup", 5, r"n_warmup must be 0 .* Received: n_warmup=5"),
    ("n_chains", 0, "n_chains must be at least 1. Received: n_chains=0"),
    ("leapfrog_steps", 0, "leapfrog_steps must be at least 1. Received: leapfrog_steps=0"),
    ("target_accept", 1.0, r"target_accept must lie in \(0, 1\). Received: target_accept=1.0"),
    ("thin", 0, "thin must be at least 1. Received: thin=0"),
    ("n_probes", 0, "n_probes must be at least 1. Received: n_probes=0"),
    ("sim_preset", "huge", "sim_preset must be one of .* Received: sim_preset='huge'"),
    ("jit_compile", "yes", "jit_compile must be True or False. Received: jit_compile='yes'"),
    ("keep_field_draws", 1, "keep_field_draws must be True or False. Received: keep_field_draws=1"),
    ("devices", 0, "devices must be at least 1. Received: devices=0"),
    ("workers", 0, "workers must be at least 1. Received: workers=0"),
    ("workers", 1.5, "workers must be an integer. Received: workers=1.5"),
    ("devices", 3, r"n_chains must be a multiple of devices=3"),
    ("sampler", "nuts", "sampler must be one of .* Received: sampler='nuts'"),
    ("bias_kernel", "mala", "bias_kernel must be one of .* Received: bias_kernel='mala'"),
    ("bias_steps", 0, "bias_steps must be at least 1. Received: bias_steps=0"),
    ("n_bias_pilot", 10, "n_bias_pilot must be at least 50. Received: n_bias_pilot=10"),
    ("bias_carry", "shear", "bias_carry must be one of .* Received: bias_carry='shear'"),
    ("bias_carry", "npe_moments", "bias_carry needs sampler='gibbs' .* Received: bias_carry='npe_moments', "
                                  "sampler='joint'"),
    ("n_components", 0, "n_components must be at least 1. Received: n_components=0"),
    ("forward_dtype", "float16", "forward_dtype must be one of .* Received: forward_dtype='float16'"),
    ("n_components", 1.5, "n_components must be an integer. Received: n_components=1.5"),
    ("bias_metric", "fisher", "bias_metric must be one of .* Received: bias_metric='fisher'"),
    ("bias_scale_coordinate", "xi", "bias_scale_coordinate must be one of .* Received: bias_scale_coordinate='xi'"),
    ("bias_scale_coordinate", "log_scale", "bias_scale_coordinate is a choice of the local-linear coordinates.* "
                                           "Received: bias_scale_coordinate='log_scale', bias_coordinates='diagonal'"),
    ("bias_metric", "warmup", "bias_metric='warmup' needs sampler='gibbs' with bias_coordinates='local_linear' .* "
                              "Received: bias_metric='warmup', sampler='joint'"),
    ("field_metric", "fisher", "field_metric must be one of .* Received: field_metric='fisher'"),
    ("field_metric", "warmup", "field_metric='warmup' needs sampler='gibbs' with a preconditioner .* "
                               "Received: field_metric='warmup', sampler='joint'"),
    ("metric_windows", 0, "metric_windows must be at least 1. Received: metric_windows=0"),
    ("metric_windows", 20000, "metric_windows must be at most 8. Received: metric_windows=20000"),
    ("metric_windows", 2, "metric_windows above 1 needs bias_metric or field_metric 'warmup' .* Received: "
                          "metric_windows=2, bias_metric='start', field_metric='start'"),
    ("bias_min_step_factor", 0.0, "bias_min_step_factor must be positive. Received: bias_min_step_factor=0.0"),
    ("bias_min_step_factor", 1.5, r"bias_min_step_factor must be in \(0, 1\]. Received: bias_min_step_factor=1.5"),
    ("bias_min_step_factor", float("nan"), "bias_min_step_factor must be a finite number"),
    ("bias_min_step_factor", 0.25, "bias_min_step_factor needs sampler='gibbs' .* Received: "
                                   "bias_min_step_factor=0.25, sampler='joint'"),
])
def test_every_field_is_checked_on_construction(field, value, match):
    with pytest.raises(ValueError, match=match):
        joint_quick(**{field: value})


def test_settings_in_processes_cannot_share_split_chains_devices():
    with pytest.raises(ValueError, match="workers must be 1 when the chains are split over devices.* Received: "
                                         "workers=2, devices=2"):
        joint_quick(devices=2, workers=2)
    assert field_level.Config.preset("quick").workers == 2 and joint_quick(workers=1).workers == 1


def test_settings_that_save_too_few_draws_for_the_coverage_are_refused_before_any_work():
    # 2 chains: draws 0, 5, ..., 35 of 40 are 8 per chain, 16 in all, under the coverage's 20
    with pytest.raises(ValueError, match="save 8 per chain, 16 in all. Received: n_samples=40, thin=5, n_chains=2"):
        joint_quick(n_samples=40, thin=5)
    # 8 chains of 3 saved draws: enough in all, too few per chain
    with pytest.raises(ValueError, match="save 3 per chain, 24 in all. Received: n_samples=50, thin=20, n_chains=8"):
        joint_quick(n_samples=50, thin=20, n_chains=8)
    cfg = joint_quick(n_samples=46, thin=5)  # draws 0, 5, ..., 45: 10 per chain, 20 in all
    assert -(-cfg.n_samples // cfg.thin) * cfg.n_chains == 20


def test_the_log_scale_coordinate_is_one_of_the_local_linear_maps_choices():
    from tfhalo.bias.reparam import SCALE_COORDINATES

    assert field_level.BIAS_SCALE_COORDINATES == SCALE_COORDINATES
    for coordinates in ("local_linear", "pilot"):
        cfg = joint_quick(bias_coordinates=coordinates, bias_scale_coordinate="log_scale")
        assert cfg.bias_scale_coordinate == "log_scale"


def test_a_random_bias_step_needs_a_bias_kernel_with_a_step():
    with pytest.raises(ValueError, match="bias_min_step_factor needs .* bias_kernel='slice'"):
        joint_quick(sampler="gibbs", bias_kernel="slice", bias_min_step_factor=0.5)
    for kernel in ("hmc", "nuts"):
        cfg = joint_quick(sampler="gibbs", bias_kernel=kernel, bias_min_step_factor=0.5)
        assert cfg.bias_min_step_factor == 0.5


def test_the_warmup_bias_metric_needs_the_local_linear_coordinates_and_a_warmup_to_estimate_it():
    gibbs = dict(sampler="gibbs", bias_kernel="hmc", bias_metric="warmup")
    with pytest.raises(ValueError, match="needs sampler='gibbs' with bias_coordinates='local_linear' .* "
                                         "bias_coordinates='diagonal'"):
        joint_quick(**gibbs)
    with pytest.raises(ValueError, match="n_warmup must be at least 16 with bias_metric='warmup' .* "
                                         "Received: n_warmup=0"):
        joint_quick(bias_coordinates="local_linear", n_warmup=0, **gibbs)
    cfg = joint_quick(bias_coordinates="local_linear", n_warmup=20, **gibbs)
    assert cfg.bias_metric == "warmup"


@pytest.mark.parametrize("bias_kernel", field_level.BIAS_KERNELS)
def test_every_blocked_bias_kernel_runs_compiled_or_not(bias_kernel):
    for jit in (True, False):
        cfg = joint_quick(sampler="gibbs", bias_kernel=bias_kernel, jit_compile=jit)
        assert (cfg.bias_kernel, cfg.jit_compile) == (bias_kernel, jit)


def test_presets_are_valid_frozen_and_round_trip():
    for name in field_level.PRESETS:
        cfg = field_level.Config.preset(name, seed=2)
        assert cfg.name == name and cfg.seed == 2
        assert field_level.Config(**cfg.to_dict()) == cfg
    cfg = field_level.Config.preset("quick")
    assert cfg.n_grid == 16 and cfg.sim_params().n_side == 128 and cfg.sim_params().box_size == 64.0
    # quick and demo: the blocked route, a valid config whose warm-up is long enough for its metrics
    for name in ("quick", "demo"):
        preset = field_level.Config.preset(name)
        assert {k: getattr(preset, k) for k in field_level.QUICK_SAMPLER} == {
            k: tuple(v) if isinstance(v, list) else v for k, v in field_level.QUICK_SAMPLER.items()}
        assert preset.sampler == "gibbs" and preset.n_warmup >= 2 * field_level.MIN_WARMUP_FOR_WARMUP_METRIC
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_samples = 10
    with pytest.raises(ValueError, match=r"unknown Config fields \['temperature'\]"):
        field_level.Config.preset("quick", temperature=2)
    with pytest.raises(ValueError, match="preset must be one of .* Received: preset='huge'"):
        field_level.Config.preset("huge")


def test_the_field_metric_needs_a_preconditioner_and_enough_warmup():
    gibbs = dict(sampler="gibbs", field_metric="warmup")
    with pytest.raises(ValueError, match="field_metric='warmup' needs .* preconditioner='none'"):
        joint_quick(preconditioner="none", **gibbs)
    with pytest.raises(ValueError, match="n_warmup must be at least 16 with field_metric='warmup'.* n_warmup=0"):
        joint_quick(n_warmup=0, **gibbs)
    assert joint_quick(**gibbs).field_metric == "warmup"
    # Windows that double: 8 + 16 sweeps in the first half of a warm-up of 48.
    with pytest.raises(ValueError, match=r"n_warmup must be at least 48 with metric_windows=2 \(each window twice "
                                         r"the one before, the first at least 8 sweeps\). Received: n_warmup=47"):
        joint_quick(n_warmup=47, metric_windows=2, **gibbs)
    assert joint_quick(n_warmup=48, metric_windows=2, **gibbs).metric_windows == 2


def test_a_config_read_back_from_json_is_the_same_config_and_is_checked_again():
    import json

    cfg = joint_quick(seed=3, settings=("mock",), n_components=1)
    stored = json.loads(json.dumps(cfg.to_dict()))          # tuples come back as lists
    assert field_level.Config.from_dict(stored) == cfg
    old = {k: v for k, v in stored.items() if k not in ("bias_metric", "field_metric")}  # written before them
    assert field_level.Config.from_dict(old) == cfg
    with pytest.raises(ValueError, match=r"Unknown field-level Config fields \['temperature'\]"):
        field_level.Config.from_dict(dict(stored, temperature=2))
    with pytest.raises(ValueError, match="must be a JSON object. Received: d=\\['quick'\\]"):
        field_level.Config.from_dict(["quick"])
    with pytest.raises(ValueError, match="n_grid must divide .* Received: n_grid=24"):
        field_level.Config.from_dict(dict(stored, n_grid=24))


def _shell():
    return load_script("experiments/field_level.py")


@pytest.mark.parametrize("argv, match", [
    (["--n-grid", "24"], "n_grid must divide"),
    (["--settings", "truth"], "settings must be one of"),
    (["--n-samples", "3"], "n_samples must be at least 20"),
    (["--preset", "huge"], "preset must be one of"),
])
def test_the_shell_exits_2_before_writing_anything(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    code = _shell().main(argv + ["--suite", str(tmp_path / "suite"), "--out", str(out)])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "suite").exists()


def test_particle_factor_needs_an_even_grid():
    with pytest.raises(ValueError, match="n_grid must be even when particle_factor > 1. Received: n_grid=5"):
        joint_quick(n_side=40, n_grid=5, particle_factor=2)
    assert joint_quick(n_side=40, n_grid=5, particle_factor=1).n_grid == 5


def test_bias_spread_against_numpy_and_its_argument_checks():
    import numpy as np

    rng = np.random.default_rng(5)
    draws = rng.normal(size=(50, 3, 4)) * np.array([1.0, 2.0, 3.0, 4.0])
    scale = np.array([0.5, 1.0, 2.0, 8.0])
    got = field_level.bias_spread(draws, scale)
    want = draws.reshape(-1, 4).std(axis=0, ddof=1) / scale
    np.testing.assert_allclose(got["per_parameter"], want, rtol=1e-12)
    assert (got["median"], got["min"], got["max"]) == pytest.approx((np.median(want), want.min(), want.max()))
    with pytest.raises(ValueError, match="conditional_scale must be positive"):
        field_level.bias_spread(draws, -scale)
    with pytest.raises(ValueError, match=r"Received: shapes \(50, 3, 4\) and \(3,\)"):
        field_level.bias_spread(draws, scale[:3])
    with pytest.raises(ValueError, match="theta_draws"):
        field_level.bias_spread(np.full((5, 2, 4), np.nan), scale)



def test_every_override_flag_reaches_its_config_field():
    shell = _shell()
    values = {int: "3", float: "2.5e11", str: None}
    choices = {"start": "prior", "preconditioner": "none", "bias_coordinates": "diagonal", "sampler": "gibbs",
               "bias_kernel": "nuts", "bias_carry": "npe_moments", "bias_scale_coordinate": "log_scale",
               "forward_dtype": "float32"}
    argv, want = [], {}
    for flag, field, kind, _ in field_level.CLI_OVERRIDES:
        text = choices.get(field) if kind is str else values[kind]
        argv += [flag, text]
        want[field] = kind(text)
    args = shell.build_parser().parse_args(argv + ["--no-xla", "--keep-checkpoint", "--thin-chains", "--settings",
                                                   "mock"])
    assert field_level.overrides_from_args(args) == {**want, "jit_compile": False, "keep_checkpoint": True,
                                                     "keep_field_draws": False}
    args = shell.build_parser().parse_args(["--all-field-draws"])
    assert field_level.overrides_from_args(args) == {"keep_field_draws": True}
    untouched = field_level.overrides_from_args(shell.build_parser().parse_args([]))
    assert untouched == {}
    config = shell.make_config(shell.build_parser().parse_args(["--threshold-mass", "5e11", "--no-xla"]))
    assert (config.threshold_mass, config.jit_compile, config.n_grid) == (5e11, False, 16)


def test_the_bias_given_fields_sampler_names_a_start_that_is_not_one_row_per_chain():
    # checked before the sampler is imported or the target is called
    match = r"theta_start must be \(chains, parameters\). Received: theta_start.shape=\(17,\)"
    with pytest.raises(ValueError, match=match):
        field_level.sample_bias_given_fields(None, np.zeros(17), None, num_warmup=10, num_samples=10, seed=0)
