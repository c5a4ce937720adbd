"""Mixture density head: a Gaussian mixture in ln M for the halo mass function.

The mixture density network of Charnock et al. (2020), section 3.2: from a
feature vector psi the head gives, for K components,

    alpha_j = softplus(a_j . psi + b_j + amplitude_shift)
    mu_1    = c_1 . psi + d_1 + log_mass_threshold
    mu_j+1  = mu_j + relu(c_j+1 . psi + d_j+1)      (mean_increment="relu", the paper)
            or mu_j + softplus(c_j+1 . psi + d_j+1)  (mean_increment="softplus")
    sigma_j = softplus(e_j . psi + f_j + width_shift)

and the number density per unit mass
``n(M | psi) = sum_j alpha_j exp(-mu_j) Normal(ln M; mu_j, sigma_j)``, whose
integral above ``M_th`` is
``sum_j alpha_j / 2 exp(sigma_j^2 / 2) erfc[(ln M_th - mu_j - sigma_j^2) / (sqrt2 sigma_j)]``.
Both are evaluated in log space so that they stay finite in float32.

Reference:
    Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural
    physical engines for inferring the halo mass distribution function", MNRAS
    494, 50, arXiv:1909.06379.
"""

import math

import keras
from keras import ops

# Numerical Recipes "erfcc" Chebyshev fit: erfc(z) = t exp(-z^2 + P(t)),
# t = 1 / (1 + z / 2), relative error < 1.2e-7 for every z >= 0.
_ERFC_COEFFS = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)
# Below this argument 1 - erf(z) is accurate to working precision (erfc > 0.47).
_ERFC_SWITCH = 0.5
# Widths are floored here in the log-density and integral so that a softplus that
# underflowed to 0 cannot divide by zero.
SIGMA_FLOOR = 1e-6
MEAN_INCREMENTS = ("relu", "softplus")


def _log_erfc_tail(z):
    """log(erfc(z)) + z^2 for z >= _ERFC_SWITCH, i.e. log(erfcx(z))."""
    t = 1.0 / (1.0 + 0.5 * z)
    poly = ops.zeros_like(t) + _ERFC_COEFFS[-1]
    for c in _ERFC_COEFFS[-2::-1]:
        poly = poly * t + c
    return ops.log(t) + poly


def _log_alpha(alpha):
    tiny = ops.convert_to_tensor(_tiny(alpha.dtype), dtype=alpha.dtype)
    return ops.log(ops.maximum(alpha, tiny))


def _as_dtype(x, dtype):
    # Arrays are cast; Python scalars are converted straight to `dtype` (casting
    # them would round through float32 first).
    if hasattr(x, "dtype"):
        return ops.cast(x, dtype)
    return ops.convert_to_tensor(x, dtype=dtype)


def _tiny(dtype):
    # A normal number of the dtype, so that its log is finite and exact.
    name = str(dtype)
    if "bfloat16" in name or "32" in name:
        return 1.0e-37
    if "16" in name:
        return 6.2e-5
    return 1.0e-300


@keras.saving.register_keras_serializable(package="tfhalo")
class MixtureDensityHead(keras.layers.Layer):
    """Gaussian mixture in ln M with ordered means (Charnock et al. 2020).

    The layer holds a kernel ``(F, 3K)`` and a bias ``(3K,)``: for F = 1 and
    K = 2 that is the paper's 12 parameters (weight and bias of amplitude,
    mean and width per component). Calling it on psi ``(..., F)`` returns
    ``params (..., 3K) = [alpha_1..K, mu_1..K, sigma_1..K]`` with amplitudes
    > 0 (not normalised), means ``mu_1 <= mu_2 <= ...`` and widths > 0.

    ``log(alpha)`` is exact down to ``alpha ~ 1e-37`` in float32 (a softplus
    argument of about -85) and floored there, so log densities stay finite.

    Note: the paper's ``width_shift = ln(1e3)`` starts every width near
    ``sigma = 1e3`` in ln M, which makes the integral above threshold
    ``~exp(sigma^2/2)`` overflow; it is kept as the default because it is the
    paper's value, but a fit usually wants ``width_shift`` around 0.

    ``mean_increment="softplus"`` replaces the paper's ``relu`` between
    successive means.  The means stay ordered, but the map is smooth and has no
    zero-gradient region: with ``relu`` a posterior sampler (HMC) that steps
    into ``c psi + d < 0`` everywhere sees a flat likelihood it cannot climb
    out of, and the kink at 0 makes leapfrog energy errors diverge.

    Args:
        n_components: number of Gaussians K >= 1.
        log_mass_threshold: ln of the threshold mass M_th [ln(Msun/h)]; shifts
            mu_1 and is the default lower limit of the integral.
        amplitude_shift: bias shift inside the amplitude softplus.
        width_shift: bias shift inside the width softplus.
        mean_increment: ``"relu"`` (the paper) or ``"softplus"`` (smooth):
            the non-negative map from ``c_j+1 . psi + d_j+1`` to ``mu_j+1 - mu_j``.
        kernel_initializer, bias_initializer: Keras initializers.
        kernel_regularizer, bias_regularizer: Keras regularizers.
        **kwargs: base ``Layer`` arguments.

    Example:
        >>> import numpy as np
        >>> head = MixtureDensityHead(n_components=2, width_shift=0.0)
        >>> params = head(np.ones((5, 1), "float32"))          # (5, 6)
        >>> ln_n = head.log_number_density(params, np.log(1e13))  # (5,)
        >>> n_above = head.integral_above_threshold(params)       # (5,)
    """

    def __init__(
        self,
        n_components=2,
        log_mass_threshold=math.log(2e12),
        amplitude_shift=math.log(1e-3),
        width_shift=math.log(1e3),
        mean_increment="relu",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(n_components, bool)
            or not isinstance(n_components, int)
            or n_components < 1
        ):
            raise ValueError(
                f"n_components must be a positive integer. Received: n_components={n_components!r}"
            )
        for name, value in (
            ("log_mass_threshold", log_mass_threshold),
            ("amplitude_shift", amplitude_shift),
            ("width_shift", width_shift),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number. Received: {name}={value!r}")
        if mean_increment not in MEAN_INCREMENTS:
            raise ValueError(
                f"mean_increment must be one of {MEAN_INCREMENTS}. Received: mean_increment={mean_increment!r}"
            )
        self.n_components = n_components
        self.mean_increment = mean_increment
        self.log_mass_threshold = float(log_mass_threshold)
        self.amplitude_shift = float(amplitude_shift)
        self.width_shift = float(width_shift)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        n_features = input_shape[-1]
        if n_features is None:
            raise ValueError(
                f"The feature dimension must be known. Received: input_shape={input_shape}"
            )
        k3 = 3 * self.n_components
        self.kernel = self.add_weight(
            name="kernel",
            shape=(n_features, k3),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(k3,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
        )

    def call(self, psi):
        pre = ops.matmul(psi, self.kernel) + self.bias
        pre_alpha, pre_mu, pre_sigma = ops.split(pre, 3, axis=-1)
        alpha = ops.softplus(pre_alpha + self.amplitude_shift)
        first = pre_mu[..., :1] + self.log_mass_threshold
        if self.n_components > 1:
            increment = ops.relu if self.mean_increment == "relu" else ops.softplus
            steps = increment(pre_mu[..., 1:])
            mu = ops.concatenate([first, first + ops.cumsum(steps, axis=-1)], axis=-1)
        else:
            mu = first
        sigma = ops.softplus(pre_sigma + self.width_shift)
        return ops.concatenate([alpha, mu, sigma], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3 * self.n_components,)

    @staticmethod
    def split(params):
        """Split ``params (..., 3K)`` into ``(alpha, mu, sigma)``, each ``(..., K)``."""
        alpha, mu, sigma = ops.split(params, 3, axis=-1)
        return alpha, mu, sigma

    def log_number_density(self, params, ln_mass):
        """ln n(M | psi), n per unit mass, as a logsumexp over components.

        Args:
            params: ``(..., 3K)`` output of the layer.
            ln_mass: ln M, broadcastable against ``params[..., 0]``.

        Returns:
            ``(...)`` tensor (broadcast shape), finite for finite inputs.
        """
        params = ops.convert_to_tensor(params)
        alpha, mu, sigma = self.split(params)
        ln_mass = _as_dtype(ln_mass, params.dtype)
        sigma = ops.maximum(sigma, SIGMA_FLOOR)
        z = (ops.expand_dims(ln_mass, -1) - mu) / sigma
        terms = (
            _log_alpha(alpha)
            - mu
            - ops.log(sigma)
            - 0.5 * math.log(2 * math.pi)
            - 0.5 * ops.square(z)
        )
        return ops.logsumexp(terms, axis=-1)

    def log_integral_above_threshold(self, params, ln_mass_threshold=None):
        """ln of ``int_{M_th}^inf n(M | psi) dM`` (finite for finite inputs).

        Each component is ``ln(alpha/2) + sigma^2/2 + ln erfc(t)`` with
        ``t = (ln M_th - mu - sigma^2) / (sqrt2 sigma)``; for ``t >= 0.5`` it is
        rewritten as ``ln(alpha/2) + D - D^2/(2 sigma^2) + ln erfcx(t)``,
        ``D = ln M_th - mu``, so the huge ``exp(sigma^2/2)`` and the tiny
        ``erfc(t)`` never meet.

        Args:
            params: ``(..., 3K)`` output of the layer.
            ln_mass_threshold: ln M_th broadcastable against ``params[..., 0]``;
                defaults to the layer's ``log_mass_threshold``.

        Returns:
            ``(...)`` tensor.
        """
        if ln_mass_threshold is None:
            ln_mass_threshold = self.log_mass_threshold
        params = ops.convert_to_tensor(params)
        alpha, mu, sigma = self.split(params)
        sigma = ops.maximum(sigma, SIGMA_FLOOR)
        ln_th = ops.expand_dims(_as_dtype(ln_mass_threshold, params.dtype), -1)
        delta = ln_th - mu
        t = (delta - ops.square(sigma)) / (math.sqrt(2.0) * sigma)
        # Both branches are evaluated, so each gets an argument in its own range
        # (no inf/NaN leaks into the gradient of the unused branch).
        t_low = ops.minimum(t, _ERFC_SWITCH)
        t_high = ops.maximum(t, _ERFC_SWITCH)
        low = 0.5 * ops.square(sigma) + ops.log(1.0 - ops.erf(t_low))
        high = delta - ops.square(delta) / (2.0 * ops.square(sigma)) + _log_erfc_tail(t_high)
        log_terms = _log_alpha(alpha) - math.log(2.0) + ops.where(t < _ERFC_SWITCH, low, high)
        return ops.logsumexp(log_terms, axis=-1)

    def integral_above_threshold(self, params, ln_mass_threshold=None):
        """``int_{M_th}^inf n(M | psi) dM`` (the analytic erfc form).

        ``exp`` of :meth:`log_integral_above_threshold`: never NaN, and inf only
        when the true value exceeds the dtype's range.
        """
        return ops.exp(self.log_integral_above_threshold(params, ln_mass_threshold))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_components": self.n_components,
                "log_mass_threshold": self.log_mass_threshold,
                "amplitude_shift": self.amplitude_shift,
                "width_shift": self.width_shift,
                "mean_increment": self.mean_increment,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config
