"""tfhalo.distribute: data-parallel training on 2 devices takes the steps one device takes on the same global batch.

The two-device checks run in a subprocess per backend, on 2 virtual CPU devices (JAX:
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before jax is imported; TensorFlow: two logical
CPUs configured before it initialises), so this file checks both backends whatever ``KERAS_BACKEND`` is.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfhalo.distribute import check_batch_split, check_devices, data_parallel
from tfhalo.studies import deep_halos

ROOT = Path(__file__).resolve().parents[1]

# Trains the deep-halo CNN (tiny) through HaloDataset (the study's data path) for 2 epochs of 3 batches of 4
# with plain SGD, whose step is proportional to the gradient (Adam's is nearly scale-free and would hide a
# gradient summed instead of averaged over the devices), once without distribution and once on 2 devices,
# then predicts 9 particles (a last batch of 1) outside the scope, as the study does. Prints one JSON line.
TWO_DEVICE_SCRIPT = r"""
import json, os
backend = os.environ["KERAS_BACKEND"]
if backend == "tensorflow":
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from tests.helpers.tiny_sims import make_tiny_simulation
from tfhalo.data import BoxInputs, HaloDataset, LabelScaler, ParticleSet, predict_log_mass
from tfhalo.distribute import available_devices, data_parallel
from tfhalo.losses import CauchySelectionLoss
from tfhalo.models import halo_cnn

sim = make_tiny_simulation(n_side=10, seed=5)
rng = np.random.default_rng(11)
def particles(n):
    return ParticleSet(np.zeros(n, np.int64), rng.choice(sim.n_side**3, n, replace=False),
                       rng.uniform(11.0, 13.0, n), rng.uniform(0.0, 2.0, n))
train, validation, test = particles(12), particles(8), particles(9)
inputs = BoxInputs([sim], kind="raw", size=9)
inputs.fit_standardizer(train)
labels = LabelScaler(10.9, 13.1)

def run(devices):
    train_ds = HaloDataset(inputs, train, labels, batch_size=4, shuffle=True, seed=3)
    val_ds = HaloDataset(inputs, validation, labels, batch_size=4)
    with data_parallel(devices):
        model = halo_cnn(input_shape=(9, 9, 9, 1), conv_filters=(4,), pool_after=(True,), dense_units=(8,),
                         seed=7, compile=False)
        initial = model.get_weights()
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=CauchySelectionLoss())
        hist = model.fit(train_ds, validation_data=val_ds, epochs=2, shuffle=False, verbose=0).history
    if backend == "jax":
        replicas = min(len(v.value.sharding.device_set) for v in model.weights)
    else:
        replicas = model.distribute_strategy.num_replicas_in_sync
    pred = predict_log_mass(model, inputs, test, labels, batch_size=4, verbose=0)
    return initial, model.get_weights(), hist, pred, replicas

def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)))) for u, v in zip(a, b))

init1, w1, h1, p1, r1 = run(1)
init2, w2, h2, p2, r2 = run(2)
try:
    data_parallel(3)
    too_many = None
except ValueError as err:
    too_many = str(err)
print("RESULT " + json.dumps({
    "devices": len(available_devices()), "replicas": [r1, r2], "initial_diff": max_diff(init1, init2),
    "change": max_diff(w1, init1), "weight_diff": max_diff(w1, w2),
    "history": [{k: h1[k] for k in ("loss", "val_loss", "gamma")}, {k: h2[k] for k in ("loss", "val_loss", "gamma")}],
    "pred_diff": float(np.max(np.abs(p1 - p2))), "finite": bool(np.all(np.isfinite(p2))), "too_many": too_many}))
"""


def _two_device_run(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[-1][len("RESULT "):])


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_as_one_device_on_the_same_global_batch(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    out = _two_device_run(backend)
    assert out["devices"] == 2
    assert out["replicas"] == [1, 2]  # really distributed: every weight lives on both devices
    assert out["initial_diff"] == 0.0  # the same seeded network, so any difference comes from training
    # SGD moved the weights far beyond float32 rounding; a gradient summed (or halved) over the devices
    # instead of averaged would differ by about the change itself.
    assert out["change"] > 1e-3
    assert out["weight_diff"] <= 1e-3 * out["change"]
    one, two = out["history"]
    for key in ("loss", "val_loss", "gamma"):
        assert len(one[key]) == len(two[key]) == 2
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert out["finite"] and out["pred_diff"] <= 1e-4  # log10 M, after a last test batch of 1
    assert out["too_many"].startswith(f"devices must be at most the 2 device(s) the {backend} backend sees (")
    assert out["too_many"].endswith("). Received: devices=3")


# ------------------------------------------------------------------------------ checks


def _batch_sizes(n, batch):
    return [min(batch, n - start) for start in range(0, n, batch)]


def test_batch_split_rule_is_every_batch_divisible():
    for devices in (1, 2, 3, 4):
        for batch in range(1, 13):
            for n in range(1, 30):
                even = all(size % devices == 0 for size in _batch_sizes(n, batch))
                if even:
                    check_batch_split(devices, n, batch)
                else:
                    with pytest.raises(ValueError):
                        check_batch_split(devices, n, batch)


def test_batch_split_messages_name_the_value():
    with pytest.raises(ValueError, match=r"^batch_size must be a multiple of devices=2 .*Received: batch_size=63$"):
        check_batch_split(2, 3000, 63, "n_train")
    with pytest.raises(ValueError, match=r"^n_train must leave a last batch that splits evenly over devices=4: "
                                         r"n_train % batch_size = 57 is not a multiple of 4 \(batch_size=64\)\. "
                                         r"Received: n_train=3001$"):
        check_batch_split(4, 3001, 64, "n_train")
    with pytest.raises(ValueError, match=r"^devices must be at least 1. Received: devices=0$"):
        check_batch_split(0, 10, 2)


@pytest.mark.parametrize("bad,match", [
    (0, r"devices must be at least 1. Received: devices=0"),
    (-2, r"devices must be at least 1. Received: devices=-2"),
    (1.5, r"devices must be an integer. Received: devices=1.5"),
    (True, r"devices must be an integer. Received: devices=True"),
    ("2", r"devices must be an integer. Received: devices='2'"),
])
def test_bad_devices_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        data_parallel(bad)
    with pytest.raises(ValueError, match=match):
        deep_halos.Config(devices=bad)


def test_one_device_is_no_distribution_and_too_many_are_refused():
    assert check_devices(1) == []
    with data_parallel(1) as scope:
        assert scope is None  # contextlib.nullcontext: models are built as without the helper
    with pytest.raises(ValueError, match=r"^devices must be at most the \d+ device\(s\) the \w+ backend sees "
                                         r"\(.*\)\. Received: devices=100000$"):
        data_parallel(100_000)


def test_config_devices_and_batch_splits():
    cfg = deep_halos.Config.preset("quick", devices=2)  # 3000 % 64 = 56, 500 % 256 = 244: both even
    assert cfg.devices == 2 and deep_halos.Config().devices == 1
    assert deep_halos.Config(**cfg.to_dict()) == cfg
    assert "devices" not in deep_halos.MODEL_FIELDS  # a run may resume on another number of devices
    with pytest.raises(ValueError, match=r"batch_size must be a multiple of devices=2 .*Received: batch_size=63"):
        deep_halos.Config(devices=2, batch_size=63)
    with pytest.raises(ValueError, match=r"n_train must leave .* Received: n_train=3001"):
        dataclasses.replace(cfg, devices=4, n_train=3001)
    with pytest.raises(ValueError, match=r"n_validation must leave .*n_validation % predict_batch_size = 244 "
                                         r"is not a multiple of 8 .*Received: n_validation=500"):
        deep_halos.Config(devices=8)


def _script(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "deep_halos.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv,message", [
    (["--devices", "0"], "devices must be at least 1. Received: devices=0"),
    (["--devices", "2", "--batch-size", "63"], "batch_size must be a multiple of devices=2"),
    # Settings that split over 256 devices, which no machine has: refused at run time, before anything is written.
    (["--devices", "256", "--batch-size", "256", "--n-train", "256", "--n-validation", "256"],
     "devices must be at most the "),
])
def test_script_refuses_bad_devices_with_exit_2_and_writes_nothing(tmp_path, argv, message):
    proc = _script(*argv, "--out", str(tmp_path / "study"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Received: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
