"""Chains sharded over several devices (``SamplerConfig.devices``, JAX only).

Sharding moves the chains, it does not change them: with the same seed, a run on
two (virtual CPU) devices must give the draws of a run on one, to the rounding of
the means over chains that then sum across devices, and its state must really be
split over the devices.  The JAX run needs its own process (the device count is
fixed when JAX starts, by ``XLA_FLAGS=--xla_force_host_platform_device_count``),
so it runs in the JAX test session only, where TFP's JAX substrate imports.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tfhalo.inference as inf
from tfhalo import backend

ROOT = Path(__file__).resolve().parents[2]

_SHARDED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from keras import ops
    import jax
    import tfhalo.inference as inf
    from tfhalo.inference import sampler

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    prec = np.linalg.inv(a @ a.T + np.eye(3))
    mean = rng.normal(size=3)

    def log_prob(x):  # (C, P) -> (C,), a correlated Gaussian
        d = x - ops.convert_to_tensor(mean)
        return -0.5 * ops.sum(d * ops.matmul(d, ops.convert_to_tensor(prec)), axis=-1)

    # Record where the compiled blocks' states live (the compiled functions are built inside sample()).
    seen = {"warmup": [], "sampling": []}
    build = sampler._Compiled.__init__

    def spy(self, *args):
        build(self, *args)
        warmup_block, sampling_block = self.warmup_block, self.sampling_block

        def where(x):
            return [len(x.sharding.device_set), [list(s.data.shape) for s in x.addressable_shards]]

        def warm(*a):
            out = warmup_block(*a)
            seen["warmup"].append(where(out[0].transformed_state[0]))
            return out

        def draw(*a):
            out = sampling_block(*a)
            seen["sampling"].append(dict(z_in=where(a[0]), z_out=where(out[2]), draws=where(out[0]),
                                         step_size_devices=len(a[1].sharding.device_set)))
            return out

        self.warmup_block, self.sampling_block = warm, draw

    sampler._Compiled.__init__ = spy
    starts = mean + rng.normal(size=(4, 3))

    def run(devices, **kw):
        cfg = inf.SamplerConfig(kernel="nuts", num_chains=4, num_warmup=20, num_samples=20, block_size=10,
                                seed=5, devices=devices)
        for k in seen:
            seen[k].clear()
        ch = inf.sample(log_prob, starts, cfg, progress=False, **kw)
        return ch, {k: list(v) for k, v in seen.items()}

    one, seen_one = run(1)
    two, seen_two = run(2, checkpoint_dir="ckpt")
    # A checkpoint written on two devices is read back on one: devices is not part of a run's identity.
    back, seen_back = run(1, checkpoint_dir="ckpt")
    try:  # six chains split evenly over three devices, but there are two
        inf.sample(log_prob, np.zeros((6, 3)), inf.SamplerConfig(num_chains=6, devices=3), progress=False)
        too_many = ""
    except ValueError as err:
        too_many = str(err)
    np.savez("draws.npz", one=one.samples, two=two.samples, back=back.samples,
             lp_one=one.sample_stats["lp"], lp_two=two.sample_stats["lp"],
             imm_one=one.inverse_mass_matrix, imm_two=two.inverse_mass_matrix,
             eps=np.array([one.step_size, two.step_size]))
    print(json.dumps(dict(n_devices=jax.device_count(), seen_one=seen_one, seen_two=seen_two,
                          seen_back=seen_back, too_many=too_many)))
""")


def _run_sharded(tmp_path):
    if backend.NAME != "jax":
        pytest.skip("checked in the JAX test session")
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    probe = subprocess.run([sys.executable, "-c", "import tensorflow_probability.substrates.jax.mcmc"],
                           env=env, capture_output=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip("TFP's JAX substrate does not import here (it needs the pinned tfp-nightly)")
    # The script runs in tmp_path (its checkpoint and arrays land there): import tfhalo from this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(tmp_path / "draws.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(out.stdout.strip().splitlines()[-1]), arrays


def test_two_devices_give_the_draws_of_one_with_the_chains_split(tmp_path):
    info, a = _run_sharded(tmp_path)
    assert info["n_devices"] == 2
    # One device: everything on it.
    assert all(w == [1, [[4, 3]]] for w in info["seen_one"]["warmup"])
    assert [s["z_out"] for s in info["seen_one"]["sampling"]] == [[1, [[4, 3]]]] * 2
    # Two devices: two chains on each, through warm-up and sampling; the step size is replicated.
    assert len(info["seen_two"]["warmup"]) == 2 and len(info["seen_two"]["sampling"]) == 2
    assert all(w == [2, [[2, 3], [2, 3]]] for w in info["seen_two"]["warmup"])
    for s in info["seen_two"]["sampling"]:
        assert s["z_in"] == s["z_out"] == [2, [[2, 3], [2, 3]]]
        assert s["draws"] == [2, [[10, 2, 3], [10, 2, 3]]]
        assert s["step_size_devices"] == 2
    # The same chains: the devices differ only in how the means over chains are summed.
    assert a["one"].shape == (20, 4, 3) and np.all(np.isfinite(a["one"]))
    np.testing.assert_allclose(a["two"], a["one"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a["lp_two"], a["lp_one"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a["imm_two"], a["imm_one"], rtol=1e-9)
    np.testing.assert_allclose(a["eps"][1], a["eps"][0], rtol=1e-9)
    # The checkpoint of the two-device run resumes on one device, without sampling again.
    assert info["seen_back"] == {"warmup": [], "sampling": []}
    np.testing.assert_array_equal(a["back"], a["two"])
    assert "devices must be at most the 2 device(s)" in info["too_many"]
    assert "Received: devices=3" in info["too_many"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(devices=0), "devices must be at least 1. Received: devices=0"),
    (dict(devices=1.5), "devices must be an integer"),
    (dict(devices="2"), "devices must be an integer"),
    (dict(num_chains=3, devices=2), r"num_chains must be a multiple of devices=2 .*Received: num_chains=3"),
])
def test_bad_devices_raise_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inf.SamplerConfig(**kwargs)


def test_more_devices_than_the_backend_offers_are_refused_before_sampling():
    cfg = inf.SamplerConfig(num_chains=4, num_warmup=0, num_samples=4, devices=2)

    def never(x):
        raise AssertionError("the target was evaluated before the refusal")

    if backend.NAME == "tensorflow":
        match = r"devices > 1 \(chain sharding\) needs the JAX backend.*Received: devices=2 on the tensorflow"
    else:
        import jax

        if jax.device_count() >= 2:
            pytest.skip("this JAX session has several devices")
        match = r"devices must be at most the 1 device\(s\).*Received: devices=2"
    with pytest.raises(ValueError, match=match):
        inf.sample(never, np.zeros((4, 2)), cfg, progress=False)


def test_shard_chains_with_one_device_is_the_identity_and_refuses_more_on_tensorflow():
    x = backend.constant(np.arange(6.0).reshape(3, 2))
    assert backend.shard_chains(x, 1) is x
    if backend.NAME == "tensorflow":
        with pytest.raises(ValueError, match="needs the JAX backend.*Received: devices=2"):
            backend.shard_chains(x, 2)
