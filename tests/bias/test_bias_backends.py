"""tfhalo.bias on the current Keras backend (run under KERAS_BACKEND=tensorflow and =jax).

The compiled log posterior is a function of theta alone, the Hessian helper is
exact on an analytic target, and under JAX a MAP fit and a few HMC steps through
the sampling coordinates load no TensorFlow module.
"""

import textwrap

import numpy as np
import pytest
from keras import ops

from tests.helpers.backend import run_under_jax_without_tensorflow
from tfhalo import backend
from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data
from tfhalo.bias.fit import hessian_of, informed_start, value_and_gradient_fn

M_TH = 1e12


def _likelihood(seed=0):
    rng = np.random.default_rng(seed)
    rho = np.exp(rng.normal(scale=0.5, size=(4, 4, 4)))
    data = make_bias_data(rho / rho.mean(), rng.uniform(0, 20.0, size=(10, 3)),
                          M_TH * np.exp(rng.exponential(1.0, size=10)), 20.0, M_TH)
    return NeuralBiasLikelihood(build_model(data.log_mass_threshold, n_grid=4, dtype="float64"), data)


def test_compiled_log_posterior_is_a_function_of_theta_alone():
    # The compiled value-and-gradient must not freeze the model's variables at trace time:
    # after the variables change, it still answers for the theta it is given.
    like = _likelihood()
    theta_a = informed_start(like, np.random.default_rng(1))
    theta_b = informed_start(like, np.random.default_rng(2))
    value_and_grad = value_and_gradient_fn(like)
    like.layout.set(like.model, theta_a)
    first = float(value_and_grad(backend.constant(theta_b))[0])
    like.layout.set(like.model, theta_b + 1.0)
    again, grad = value_and_grad(backend.constant(theta_b))
    assert float(again) == first
    assert first == pytest.approx(float(like.log_posterior(backend.constant(theta_b))), rel=1e-12)
    # The gradient against central differences of the (float64) log posterior.
    grad = backend.to_numpy(grad)
    eps = 1e-5
    for i in (0, 4, like.layout.size - 1):
        step = np.zeros_like(theta_b)
        step[i] = eps
        up, down = (float(like.log_posterior(backend.constant(theta_b + s))) for s in (step, -step))
        assert grad[i] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-6)


def test_hessian_of_is_the_exact_hessian_of_an_analytic_target():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    sym = a @ a.T
    scale = np.array([0.5, -1.0, 2.0])
    x = rng.normal(size=3)

    def log_prob(t):  # -(t^T S t / 2 + sum exp(scale t)): Hessian of -log_prob is S + diag(scale^2 exp(scale t))
        return -(0.5 * ops.sum(t * ops.matmul(ops.convert_to_tensor(sym), t)) + ops.sum(ops.exp(scale * t)))

    expected = sym + np.diag(scale**2 * np.exp(scale * x))
    h = hessian_of(log_prob, x)
    assert h.dtype == np.float64
    np.testing.assert_allclose(h, expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(h, h.T)


_NO_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.bias import LocalLinearReparametrization, NeuralBiasLikelihood, build_model, fit_map, make_bias_data
    from tfhalo.bias.fit import value_and_gradient_fn

    rng = np.random.default_rng(0)
    rho = np.exp(rng.normal(scale=0.5, size=(4, 4, 4)))
    data = make_bias_data(rho / rho.mean(), rng.uniform(0, 20.0, size=(10, 3)),
                          1e12 * np.exp(rng.exponential(1.0, size=10)), 20.0, 1e12)
    like = NeuralBiasLikelihood(build_model(data.log_mass_threshold, n_grid=4, dtype="float64"), data)
    fit = fit_map(like, steps=50, n_starts=1, seed=0, progress=False)
    value = float(value_and_gradient_fn(like)(backend.constant(fit.theta))[0])
    rep = LocalLinearReparametrization(like, fit.theta)
    v = backend.to_numpy(rep.inverse(backend.constant(fit.theta)))
    starts = backend.to_numpy(rep.forward(backend.constant(v + 0.01 * rng.normal(size=(2, v.size)))))
    cfg = inf.SamplerConfig(kernel="hmc", num_chains=2, num_warmup=0, num_samples=4, num_leapfrog_steps=2,
                            init_step_size=0.01, block_size=4, seed=3)
    ch = inf.sample(inf.batched(like.log_posterior, 2), starts, cfg, bijector=rep, progress=False)
    draws = ch.samples.reshape(-1, fit.theta.size)
    tf_modules = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    print(json.dumps(dict(log_posterior=fit.log_posterior, value=value, first=float(fit.history[0]),
                          hessian_symmetric=bool(np.array_equal(fit.hessian, fit.hessian.T)),
                          hessian_finite=bool(np.isfinite(fit.hessian).all()),
                          shape=list(ch.samples.shape), finite=bool(np.isfinite(draws).all()),
                          in_domain=bool((rep.half_space(draws) > 0).all()), substrate=type(rep).__mro__[1].__module__,
                          theta_dtype=str(fit.theta.dtype), tf_modules=tf_modules[:10])))
""")


def test_jax_bias_fit_and_sampling_load_no_tensorflow():
    result = run_under_jax_without_tensorflow(_NO_TF_SCRIPT)
    assert result["substrate"].startswith("tensorflow_probability.substrates.jax")
    # The fit climbed from its start, reports its own optimum's value, in float64.
    assert np.isfinite(result["log_posterior"]) and result["theta_dtype"] == "float64"
    assert result["log_posterior"] > result["first"]
    assert result["value"] == pytest.approx(result["log_posterior"], rel=1e-12)
    assert result["hessian_symmetric"] and result["hessian_finite"]
    assert result["shape"] == [4, 2, 17] and result["finite"] and result["in_domain"]
