"""Normalising-flow preconditioning of HMC ("NeuTra", Hoffman et al. 2019).

Why.  A constant mass matrix, however well adapted, whitens a posterior only
globally.  The neural bias posterior has a neck where the second mixture
component is heavy and narrow, joined to a broad bulk: the step size the neck
allows (~0.05 in whitened units) random-walks the bulk (measured on the quick
preset: ESS 10-40 per 600 draws, 100+ divergences).  A flow ``v = f(z)``
trained so that ``f(N(0, I))`` approximates the posterior straightens such
varying curvature; HMC on ``z`` with the Jacobian-corrected target then samples
the posterior exactly (the flow is fixed while sampling), whatever the quality
of the fit: a poor flow costs efficiency, never correctness.

What.  :class:`FlowReparametrization`: ``v = centre + L . IAF_K(... IAF_1(z))``,
each ``IAF`` a ``tfp.bijectors.MaskedAutoregressiveFlow`` (MADE network,
``tfp.bijectors.AutoregressiveNetwork``) used in its one-pass direction and
followed by a reversal of the coordinates.  ``centre`` and ``L`` come from a
Gaussian approximation (the Laplace one, the MAP and ``chol(H^-1)``, or, as
experiments/neural_bias.py does, the mean and covariance of pilot draws) and the
networks' output layers start at zero, so the flow starts as that Gaussian and
:meth:`FlowReparametrization.fit` only learns the departures from it, by
maximising the evidence lower bound ``E_z[ln p(f(z)) + ln |df/dz|]`` with
Adam (stochastic, reparametrised gradients, seeded).

Example:
    >>> flow = FlowReparametrization(centre, chol)
    >>> flow.fit(log_posterior, steps=1000, seed=0)          # doctest: +SKIP
    >>> result = sample_posterior(log_posterior, init, reparametrization=flow)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras
from tqdm.auto import tqdm

from tfhalo.bias.reparam import Reparametrization

tfb = tfp.bijectors


class FlowReparametrization(Reparametrization):
    """``v = forward(z)``: affine (Laplace) map after ``n_flows`` inverse-autoregressive flows.

    Args:
        centre: ``(P,)`` location (the MAP, or the mean of pilot draws).
        chol: ``(P, P)`` lower-triangular scale (``chol(H^-1)`` or of the pilot covariance).
        hidden_units: widths of each MADE network's hidden layers.
        n_flows: autoregressive layers (each followed by a coordinate reversal).
        seed: seeds the networks' initial weights.

    Attributes:
        size: ``P``.
        elbo: ELBO estimate per step of the last :meth:`fit` (NumPy).

    Raises:
        ValueError: shapes that do not match, non-finite values, ``n_flows < 1``.
    """

    def __init__(self, centre, chol, hidden_units=(32, 32), n_flows: int = 2, seed: int = 0):
        centre = np.asarray(centre, np.float64)
        chol = np.asarray(chol, np.float64)
        if centre.ndim != 1 or not np.all(np.isfinite(centre)):
            raise ValueError(f"centre must be a finite (P,) vector. Received: centre.shape={centre.shape}")
        p = centre.size
        if chol.shape != (p, p) or not np.all(np.isfinite(chol)):
            raise ValueError(f"chol must be a finite ({p}, {p}) matrix. Received: chol.shape={chol.shape}")
        if int(n_flows) < 1:
            raise ValueError(f"n_flows must be a positive integer. Received: n_flows={n_flows}")
        hidden_units = [int(h) for h in hidden_units]
        if not hidden_units or min(hidden_units) < 1:
            raise ValueError(f"hidden_units must be positive widths. Received: hidden_units={hidden_units}")
        self.size = p
        self.centre = centre
        self.chol = np.tril(chol)
        self.hidden_units, self.n_flows, self.seed = hidden_units, int(n_flows), int(seed)
        self.elbo = np.zeros(0)
        self._nets = []
        layers = [tfb.Shift(tf.constant(centre)), tfb.ScaleMatvecTriL(tf.constant(self.chol))]
        for k in range(self.n_flows):
            net = tfb.AutoregressiveNetwork(params=2, hidden_units=hidden_units, activation="tanh",
                                            dtype="float64", name=f"made_{k}",
                                            kernel_initializer=tf_keras.initializers.GlorotUniform(
                                                seed=self.seed * 1009 + k))
            net(tf.zeros([1, p], tf.float64))
            # Zero output layer: the flow starts as the identity (the Laplace approximation).
            net.trainable_variables[-2].assign(tf.zeros_like(net.trainable_variables[-2]))
            self._nets.append(net)
            # Invert(MAF): the one-pass (inverse-autoregressive) direction maps z -> v.
            layers.append(tfb.Invert(tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=_unstacked(net))))
            if p > 1:
                layers.append(tfb.Permute(np.arange(p)[::-1].copy()))
        # tfb.Chain applies its list from the last to the first: z -> flows -> scale -> shift.
        self.bijector = tfb.Chain(layers)

    @property
    def trainable_variables(self):
        return [v for net in self._nets for v in net.trainable_variables]

    def _forward(self, z):
        z = tf.convert_to_tensor(z, tf.float64)
        return self.bijector.forward(z), self.bijector.forward_log_det_jacobian(z, event_ndims=1)

    def inverse(self, v) -> np.ndarray:
        """``(..., P)`` v -> z (NumPy; ``P`` sequential network passes per flow)."""
        return np.asarray(self.bijector.inverse(tf.constant(np.asarray(v, np.float64))), np.float64)

    def fit(self, log_prob_fn, steps: int = 1000, batch_size: int = 16, learning_rate: float = 3e-3,
            seed: int = 0, jit_compile: bool = True, progress: bool = True,
            robust_floor: float = 100.0) -> "FlowReparametrization":
        """Maximise the ELBO of ``f(N(0, I))`` against ``log_prob_fn`` (``(P,) -> scalar``, unnormalised).

        Draws for each step come from a seeded stateless generator, so the same
        seed gives the same flow.  Non-finite steps (a draw where the target is
        -inf) are skipped rather than applied.

        Args (besides the target):
            robust_floor: draws more than this many nats below the target at
                ``z = 0`` enter the objective through a logarithm (see the code).

        Returns:
            self, with ``elbo`` the per-step (unmodified) ELBO estimates.
        """
        for name, value in (("steps", steps), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive. Received: learning_rate={learning_rate}")
        if not robust_floor > 0:
            raise ValueError(f"robust_floor must be positive. Received: robust_floor={robust_floor}")
        variables = self.trainable_variables
        # The MADE networks are tf_keras layers (TFP's), so their optimizer is too.
        opt = tf_keras.optimizers.Adam(learning_rate)
        n, p = int(batch_size), self.size
        entropy = tf.constant(0.5 * p * (1.0 + np.log(2.0 * np.pi)), tf.float64)
        target = self.wrap(log_prob_fn)
        ref = tf.constant(float(target(tf.zeros([p], tf.float64))), tf.float64)
        floor = tf.constant(float(robust_floor), tf.float64)

        # Only the ELBO and its gradient are compiled (XLA on CPU failed to
        # link the optimizer's update fused into the same graph).
        @tf.function(jit_compile=jit_compile)
        def elbo_and_grads(key):
            eps = tf.random.stateless_normal([n, p], seed=key, dtype=tf.float64)
            with tf.GradientTape() as tape:
                # XLA on CPU fails to link vectorized_map's graph; unroll there instead.
                values = (tf.stack([target(eps[i]) for i in range(n)]) if jit_compile
                          else tf.vectorized_map(target, eps, fallback_to_while_loop=True))
                # Early draws can sit 1e100+ nats down (the integral term grows
                # like exp(sigma^2 / 2)) and would swamp every gradient: below
                # ``floor`` nats under the start, the objective grows only
                # logarithmically.  This changes what is optimised, not what is
                # sampled: HMC on the flow's coordinates stays exact.
                delta = values - ref
                deep = tf.maximum(-delta - floor, 0.0)
                robust = tf.where(delta > -floor, delta, -floor - tf.math.log1p(deep))
                loss = -tf.reduce_mean(robust)
            grads = tape.gradient(loss, variables)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
            # + the entropy of N(0, I): a true lower bound on ln Z.
            return tf.reduce_mean(values) + entropy, grads, finite

        def step(key):
            elbo, grads, finite = elbo_and_grads(key)
            if bool(finite):
                opt.apply_gradients(zip(grads, variables))
            return elbo

        keys = np.random.default_rng(seed).integers(0, 2**31 - 1, size=(int(steps), 2))
        history = []
        for i in tqdm(range(int(steps)), desc="flow (ELBO)", disable=not progress, mininterval=1.0):
            history.append(float(step(tf.constant(keys[i], tf.int32))))
        self.elbo = np.asarray(history)
        return self


def _unstacked(net, max_log_scale=2.0):
    # A soft bound on each layer's log-scale keeps one bad ELBO step from
    # sending exp(log_scale) to inf (early draws can sit 1e100+ nats down).
    def fn(x):
        out = net(x)
        return out[..., 0], max_log_scale * tf.tanh(out[..., 1] / max_log_scale)

    return fn


class ComposedReparametrization(Reparametrization):
    """``theta = outer.forward(inner.forward(z))``, log-determinants added.

    Both parts follow the reparametrisation interface of
    :mod:`tfhalo.bias.reparam` (``_forward`` returning ``(value, log_det)``,
    ``inverse`` in NumPy), e.g. a :class:`~tfhalo.bias.reparam.LocalLinearReparametrization`
    outside a :class:`FlowReparametrization` trained on its coordinates.
    """

    def __init__(self, outer, inner):
        if outer.size != inner.size:
            raise ValueError(f"outer and inner must have the same size. Received: {outer.size} and {inner.size}")
        self.outer, self.inner, self.size = outer, inner, outer.size

    def _forward(self, z):
        v, log_det_inner = self.inner._forward(z)
        theta, log_det_outer = self.outer._forward(v)
        return theta, log_det_inner + log_det_outer

    def inverse(self, theta) -> np.ndarray:
        return self.inner.inverse(self.outer.inverse(theta))
