"""Maximum a posteriori fit of the neural bias model (Adam through the Keras model).

The paper pre-trains the parameters by gradient descent before sampling.  Here
Adam runs on the flat parameter vector (the Keras model evaluated with
``stateless_call``), from a few seeded starts, and the best run is polished by
L-BFGS so that the Hessian at the optimum (the sampler's preconditioner) is
taken at a true stationary point.  Compilation and derivatives come from
:mod:`tfhalo.backend`, so the fit runs on TensorFlow or on JAX.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops
from scipy import optimize
from tqdm.auto import tqdm

from tfhalo import backend
from tfhalo.bias.likelihood import NeuralBiasLikelihood


@dataclasses.dataclass
class MapResult:
    """Outcome of :func:`fit_map`.

    Attributes:
        theta: ``(P,)`` float64 MAP parameters (also written into the model).
        log_posterior: ln L + ln prior at ``theta``.
        log_likelihood: ln L at ``theta``.
        hessian: ``(P, P)`` Hessian of ``-ln posterior`` at ``theta``.
        history: ln posterior after every Adam step of the best start.
        n_evaluations: log-density-and-gradient evaluations spent.
        other_half: for an ``l = 0`` NPE, the optimum of the other half-space of
            the NPE's radial weights (reached from the reflected MAP,
            :meth:`~tfhalo.bias.reparam.LocalLinearReparametrization.mirror`):
            ``{"log_posterior", "log_laplace_mass_ratio", "theta"}``, the ratio
            being the Laplace estimate of ln(mass there / mass in the MAP's half);
            ``None`` when not applicable.  Chains run through the
            :class:`~tfhalo.bias.reparam.LocalLinearReparametrization` bijector
            sample only the MAP's half (see ``docs/sampling_coordinates.md``).
    """

    theta: np.ndarray
    log_posterior: float
    log_likelihood: float
    hessian: np.ndarray
    history: np.ndarray
    n_evaluations: int
    other_half: dict | None = None


def value_and_gradient_fn(likelihood: NeuralBiasLikelihood, jit_compile: bool = False):
    """A compiled ``theta (P,) -> (ln posterior, gradient)`` in the model's dtype (:func:`tfhalo.backend.jit`).

    On TensorFlow ``jit_compile=True`` compiles with XLA: ~4x faster on CPU for
    the small default model (the many tiny ops of the mixture head fuse); JAX
    always compiles with XLA.
    """

    def value_and_grad(theta):
        return backend.value_and_gradient(likelihood.log_posterior, theta)

    return backend.jit(value_and_grad, jit_compile=jit_compile)


def hessian(likelihood: NeuralBiasLikelihood, theta) -> np.ndarray:
    """``(P, P)`` float64 Hessian of ``-ln posterior`` at ``theta`` (autodiff, symmetrised)."""
    return hessian_of(likelihood.log_posterior, theta, likelihood.layout.dtype)


def hessian_of(log_prob_fn, x, dtype="float64") -> np.ndarray:
    """``(P, P)`` float64 Hessian of ``-log_prob_fn`` at ``x (P,)`` (autodiff, symmetrised).

    Example:
        The Hessian of the Jacobian-corrected target in the sampling coordinates
        ``v`` of a :class:`~tfhalo.bias.reparam.LocalLinearReparametrization`:

        >>> rep = LocalLinearReparametrization(like, fit.theta)
        >>> log_prob_v = lambda v: like.log_posterior(rep.forward(v)) + rep.forward_log_det_jacobian(v, 1)
        >>> h_v = hessian_of(log_prob_v, rep.inverse(fit.theta))   # (P, P)
    """
    return _negative_hessian_fn(log_prob_fn, dtype)(x)


def _negative_hessian_fn(log_prob_fn, dtype="float64"):
    """``x (P,) -> (P, P)`` float64 symmetrised Hessian of ``-log_prob_fn`` (:func:`tfhalo.backend.hessian_fn`)."""
    hess = backend.hessian_fn(lambda t: -log_prob_fn(t))

    def negative_hessian(x):
        h = np.asarray(backend.to_numpy(hess(backend.constant(np.asarray(x), dtype=dtype))), np.float64)
        return 0.5 * (h + h.T)

    return negative_hessian


def informed_start(likelihood: NeuralBiasLikelihood, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray:
    """A seeded starting point whose mass function already has the right scale.

    NPE weights and MDN slopes are small random numbers (so ``psi`` starts
    informative but gentle); the MDN biases are set so that every voxel starts
    with the catalogue's mean halo number density, widths of ~1 in ln M and the
    components just above the threshold.  Without this the paper's width shift
    (ln 1e3) starts the expected count ~10^16 halos away from the data.
    """
    model = likelihood.model
    head = model.head
    k = head.n_components
    volume = sum(d.voxel_volume * d.n_grid**3 for d in likelihood.data)
    n_density = likelihood.n_halos / volume
    theta = rng.normal(scale=jitter, size=likelihood.layout.size)
    offset = 0
    for var, size in zip(model.trainable_variables, likelihood.layout.sizes):
        if var is head.bias:
            sigma0 = 1.0
            # Per-component integral of alpha e^{sigma^2/2} erfc(...)/2 with mu at
            # the threshold is ~alpha e^{1/2} * 0.76 for sigma = 1.
            alpha0 = n_density / (k * math.exp(0.5 * sigma0**2) * 0.76)
            pre_alpha = math.log(math.expm1(alpha0)) - head.amplitude_shift
            pre_sigma = math.log(math.expm1(sigma0)) - head.width_shift
            bias = np.concatenate([np.full(k, pre_alpha), [-0.5] + [1.0] * (k - 1), np.full(k, pre_sigma)])
            theta[offset:offset + size] = bias + rng.normal(scale=jitter * 0.1, size=size)
        offset += size
    return theta


def fit_map(
    likelihood: NeuralBiasLikelihood,
    steps: int = 2000,
    learning_rate: float = 0.02,
    n_starts: int = 3,
    seed: int = 0,
    polish: bool = True,
    progress: bool = True,
    jit_compile: bool = False,
    mirror: bool = True,
) -> MapResult:
    """Maximum a posteriori parameters by Adam (+ L-BFGS polish), best of ``n_starts``.

    Args:
        likelihood: a :class:`NeuralBiasLikelihood` (its model receives the result).
        steps: Adam steps per start.
        learning_rate: Adam learning rate.
        n_starts: seeded starting points (:func:`informed_start`).
        seed: seed of the starting points.
        polish: finish the best start with L-BFGS on the exact objective.
        progress: show a tqdm bar.
        jit_compile: evaluate the log posterior with XLA.
        mirror: also optimise from the MAP reflected into the other half-space of
            each NPE feature's radial weights (``w -> -w``, head compensated), keep
            the better optimum, and report the other in ``other_half``: a
            softplus NPE can fit nearly as well (or better) with psi falling with
            density, and Adam from small random weights may find only one side.

    Returns:
        A :class:`MapResult`.

    Example:
        >>> result = fit_map(NeuralBiasLikelihood(model, data), steps=500)
        >>> result.theta.shape
        (17,)
    """
    for name, value in (("steps", steps), ("n_starts", n_starts)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive. Received: learning_rate={learning_rate}")
    dtype = likelihood.layout.dtype
    value_and_grad = value_and_gradient_fn(likelihood, jit_compile=jit_compile)
    rng = np.random.default_rng(seed)
    best = None
    n_eval = 0
    bar = tqdm(total=int(steps) * int(n_starts), desc="MAP (Adam)", disable=not progress, mininterval=1.0)
    for _ in range(int(n_starts)):
        theta0 = informed_start(likelihood, rng)
        history = np.empty(int(steps))
        theta = _adam(value_and_grad, theta0.astype(dtype), dtype, learning_rate, history, bar)
        n_eval += int(steps)
        value = float(value_and_grad(backend.constant(theta, dtype))[0])
        if not np.isfinite(value):
            continue
        if best is None or value > best[1]:
            best = (theta, value, history)
    bar.close()
    if best is None:
        raise RuntimeError("every MAP start diverged to a non-finite posterior; lower learning_rate")
    theta, value, history = best

    def objective(x):
        v, g = value_and_grad(backend.constant(x, dtype))
        return -float(v), -np.asarray(g, np.float64)

    def polished(x, v):
        nonlocal n_eval
        res = optimize.minimize(objective, x, jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-6})
        n_eval += int(res.nfev)
        return (np.asarray(res.x, np.float64), -float(res.fun)) if np.isfinite(res.fun) and -res.fun >= v else (x, v)

    if polish:
        theta, value = polished(theta, value)
    # One Hessian function for the MAP and the other half's optimum: JAX compiles it once.
    hessian_at = _negative_hessian_fn(likelihood.log_posterior, dtype)
    hess = hessian_at(theta)
    other = None
    if mirror:
        other = _other_half(likelihood, theta, value, hess, objective, polished, hessian_at)
        for _ in range(3):
            if other is None or other["log_posterior"] <= value:
                break
            # The reflected start found the better optimum: it is the MAP, and the
            # half just left becomes the "other" one (searched again from the new MAP,
            # which can find a better point there still).
            theta, value, hess = other["theta"], other["log_posterior"], other["hessian"]
            other = _other_half(likelihood, theta, value, hess, objective, polished, hessian_at)
    if other is not None:
        other.pop("hessian", None)
    likelihood.layout.set(likelihood.model, theta)
    log_like = _evaluate(likelihood.log_likelihood, backend.constant(theta, dtype))
    return MapResult(
        theta=theta, log_posterior=value, log_likelihood=log_like,
        hessian=hess, history=history, n_evaluations=n_eval, other_half=other,
    )


def _evaluate(fn, x) -> float:
    """``float(fn(x))``, compiled on JAX: op by op, its first call compiles every small operation on its own."""
    if backend.NAME == "jax":
        fn = backend.jit(fn)
    return float(fn(x))


def _ascent_direction(grad):
    """``-grad`` (Adam minimises ``-ln posterior``), or zeros where a wild step made it non-finite: skip it."""
    finite = ops.all(ops.isfinite(grad))
    return ops.where(finite, -grad, ops.zeros_like(grad))


def _adam(value_and_grad, theta0: np.ndarray, dtype, learning_rate: float, history: np.ndarray, bar) -> np.ndarray:
    """``len(history)`` Keras Adam steps from ``theta0`` on ``-ln posterior``; fills ``history``, returns theta.

    TensorFlow applies the gradients to a variable inside a ``tf.function``;
    JAX, whose compiled functions cannot update a variable, compiles the
    optimiser's ``stateless_apply`` and carries its state through the loop (the
    compiled ``value_and_grad`` is called on its own, so that the L-BFGS polish
    reuses its compilation).
    """
    var = keras.Variable(theta0, dtype=dtype, name="theta")
    opt = keras.optimizers.Adam(learning_rate=learning_rate)
    if backend.NAME == "jax":
        opt.build([var])

        def update(theta, grad, opt_values):
            (theta,), opt_values = opt.stateless_apply(opt_values, [_ascent_direction(grad)], [theta])
            return theta, opt_values

        update = backend.jit(update)
        theta, opt_values = var.value, [v.value for v in opt.variables]
        for i in range(history.size):
            value, grad = value_and_grad(theta)
            theta, opt_values = update(theta, grad, opt_values)
            history[i] = float(value)
            bar.update(1)
        return np.asarray(backend.to_numpy(theta), np.float64)

    def step():
        value, grad = value_and_grad(ops.convert_to_tensor(var.value))
        opt.apply_gradients([(_ascent_direction(grad), var)])
        return value

    step = backend.jit(step, jit_compile=False)
    for i in range(history.size):
        history[i] = float(step())
        bar.update(1)
    return np.asarray(var.numpy(), np.float64)


def _laplace_log_mass(log_posterior: float, hess: np.ndarray, floor: float) -> float:
    """ln of the Laplace approximation to the posterior mass around an optimum (up to a shared constant).

    Curvatures are floored at ``floor`` (the prior's precision): along a flat or
    slightly concave ridge L-BFGS stops where only the prior bounds the mass.
    """
    eig = np.linalg.eigvalsh(0.5 * (hess + hess.T))
    return log_posterior - 0.5 * float(np.sum(np.log(np.maximum(eig, floor))))


def _other_half(likelihood, theta, value, hess, objective, polished, hessian_at):
    """The optimum reached from the reflected ``theta`` if it lies in the other half-space, else None."""
    from tfhalo.bias.reparam import LocalLinearReparametrization

    try:
        rep = LocalLinearReparametrization(likelihood, theta)
    except ValueError:  # not an l = 0, single-input NPE: no half-spaces to compare
        return None
    floor = 1.0 / likelihood.prior_scale**2
    best = None
    for f in range(rep.n_feat):
        start = rep.mirror(theta, f)
        x, v = polished(start, -objective(start)[0])
        if np.all(rep.half_space(x) > 0) or not np.isfinite(v):
            continue  # the optimiser came back to the MAP's half
        if best is None or v > best[1]:
            best = (x, v)
    if best is None:
        return None
    h = hessian_at(best[0])
    return {"log_posterior": best[1], "hessian": h, "theta": best[0],
            "log_laplace_mass_ratio": _laplace_log_mass(best[1], h, floor) - _laplace_log_mass(value, hess, floor)}
