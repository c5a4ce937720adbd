"""The Neyrinck et al. (2014) bias model, scored by the same Poisson likelihood.

Halo counts per voxel are Poisson with rate

    lambda_v = Nbar (1 + delta_v)^alpha exp[-A (1 + delta_v)^(-epsilon)]

(4 parameters).  To compare with the neural bias model on the same halos, it is
multiplied by an environment-independent mass distribution p(M) above M_th (a
truncated K-Gaussian mixture in ln M fitted to the same catalogue), giving the
point-process intensity ``lambda_v p(M) / V``.  Its log-likelihood

    ln L = sum_h [ln lambda_{v(h)} - ln V + ln p(M_h)] - sum_v lambda_v

is exactly eq. 16 with ``n(M | v) = lambda_v p(M) / V``.  Everything is float64
NumPy/SciPy; the fit is maximum likelihood (L-BFGS, several starts).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats

from tfhalo.bias.fields import BiasData, as_data_list


def _count_log_rate(log_rho, params):
    """ln lambda_v for params (ln Nbar, alpha, ln A, epsilon)."""
    ln_nbar, alpha, ln_a, eps = params
    return ln_nbar + alpha * log_rho - np.exp(ln_a - eps * log_rho)


class NeyrinckBias:
    """Neyrinck count model x global truncated-mixture mass function.

    Args:
        n_components: Gaussians in the ln M mass distribution.
        n_starts: random restarts of each maximum-likelihood fit.
        seed: seed of the restarts.

    Example:
        >>> baseline = NeyrinckBias().fit(train_data)
        >>> baseline.log_likelihood(test_data)
    """

    def __init__(self, n_components: int = 2, n_starts: int = 8, seed: int = 0):
        if int(n_components) < 1:
            raise ValueError(f"n_components must be a positive integer. Received: n_components={n_components}")
        if int(n_starts) < 1:
            raise ValueError(f"n_starts must be a positive integer. Received: n_starts={n_starts}")
        self.n_components = int(n_components)
        self.n_starts = int(n_starts)
        self.seed = seed
        self.count_params = None
        self.mass_params = None
        self.log_mass_threshold = None

    # -- counts -------------------------------------------------------------
    @staticmethod
    def _count_nll(params, log_rho, counts):
        ln_rate = _count_log_rate(log_rho, params)
        with np.errstate(over="ignore"):
            value = np.sum(np.exp(ln_rate)) - np.sum(counts * ln_rate)
        return value if np.isfinite(value) else 1e300

    def _fit_counts(self, data, rng):
        log_rho = np.concatenate([np.log(d.one_plus_delta).ravel() for d in data])
        counts = np.concatenate([d.halo_counts().ravel() for d in data]).astype(np.float64)
        mean = counts.mean()
        best = None
        for i in range(self.n_starts):
            # Start 0 is "linear bias, no suppression"; the others jitter it.
            start = np.array([np.log(mean), 1.0, np.log(0.1), 1.0])
            if i:
                start = start + rng.normal(scale=[0.3, 0.7, 1.5, 0.7])
            res = optimize.minimize(self._count_nll, start, args=(log_rho, counts), method="Nelder-Mead",
                                    options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-9})
            res = optimize.minimize(self._count_nll, res.x, args=(log_rho, counts), method="L-BFGS-B")
            if best is None or res.fun < best.fun:
                best = res
        return best.x

    # -- masses -------------------------------------------------------------
    def _mass_logpdf_ln(self, params, ln_mass):
        """ln p(ln M) of the truncated mixture (density per unit ln M)."""
        k = self.n_components
        logits, mu, log_s = params[:k], params[k:2 * k], params[2 * k:]
        s = np.exp(log_s)
        log_w = logits - special.logsumexp(logits)
        comp = log_w + stats.norm.logpdf(ln_mass[:, None], mu, s)
        norm = special.logsumexp(log_w + stats.norm.logsf(self.log_mass_threshold, mu, s))
        return special.logsumexp(comp, axis=1) - norm

    def _fit_masses(self, ln_mass, rng):
        k = self.n_components

        def nll(p):
            value = -np.sum(self._mass_logpdf_ln(p, ln_mass))
            return value if np.isfinite(value) else 1e300

        spread = max(ln_mass.std(), 0.1)
        best = None
        for i in range(self.n_starts):
            mu0 = np.quantile(ln_mass, (np.arange(k) + 0.5) / k) + (rng.normal(scale=0.3, size=k) if i else 0)
            start = np.concatenate([np.zeros(k), mu0, np.full(k, np.log(spread / k))])
            res = optimize.minimize(nll, start, method="L-BFGS-B")
            if best is None or res.fun < best.fun:
                best = res
        return best.x

    # -- public -------------------------------------------------------------
    def fit(self, data) -> "NeyrinckBias":
        """Maximum-likelihood fit to one :class:`BiasData` or several (summed)."""
        data = as_data_list(data)
        rng = np.random.default_rng(self.seed)
        self.log_mass_threshold = data[0].log_mass_threshold
        self.count_params = self._fit_counts(data, rng)
        ln_mass = np.concatenate([d.halo_ln_mass for d in data])
        self.mass_params = self._fit_masses(ln_mass, rng)
        return self

    def _check_fitted(self):
        if self.count_params is None:
            raise RuntimeError("NeyrinckBias is not fitted: call fit(data) first.")

    def rate(self, one_plus_delta) -> np.ndarray:
        """Expected halo count per voxel above threshold."""
        self._check_fitted()
        return np.exp(_count_log_rate(np.log(np.asarray(one_plus_delta, np.float64)), self.count_params))

    def log_mass_pdf(self, ln_mass) -> np.ndarray:
        """ln p(M) per unit M (Msun/h) above the threshold."""
        self._check_fitted()
        ln_mass = np.atleast_1d(np.asarray(ln_mass, np.float64))
        return self._mass_logpdf_ln(self.mass_params, ln_mass) - ln_mass

    def log_number_density(self, one_plus_delta, ln_mass, voxel_volume: float) -> np.ndarray:
        """ln n(M | delta) per unit volume ((Mpc/h)^-3) and unit mass, comparable with the neural model.

        Args:
            one_plus_delta: densities (any shape), broadcast against ``ln_mass``.
            ln_mass: ln M (Msun/h).
            voxel_volume: the volume ((Mpc/h)^3) of the voxels the rate was fitted on:
                the rate is a count per voxel.
        """
        if not voxel_volume > 0:
            raise ValueError(f"voxel_volume must be positive. Received: voxel_volume={voxel_volume}")
        return np.log(self.rate(one_plus_delta)) - np.log(voxel_volume) + self.log_mass_pdf(ln_mass)

    def log_likelihood(self, data) -> float:
        """Point-process ln L (paper eq. 16 form) on one or several :class:`BiasData`."""
        self._check_fitted()
        total = 0.0
        for d in as_data_list(data):
            if abs(d.log_mass_threshold - self.log_mass_threshold) > 1e-9:
                raise ValueError(
                    f"data mass threshold differs from the fitted one. Received: ln M_th={d.log_mass_threshold}, "
                    f"fitted ln M_th={self.log_mass_threshold}"
                )
            rho = d.one_plus_delta.ravel()
            total += float(
                np.sum(self.log_number_density(rho[d.halo_voxel], d.halo_ln_mass, d.voxel_volume))
                - self.rate(rho).sum()
            )
        return total

    def voxel_log_likelihood(self, data) -> np.ndarray:
        """``(n^3,)`` float64 per-voxel terms of ln L on one :class:`BiasData`; they sum to :meth:`log_likelihood`.

        Voxel ``v``'s term is ``sum_{h in v} ln n(M_h | delta_v) - lambda_v``, the
        same decomposition as
        :meth:`~tfhalo.bias.likelihood.NeuralBiasLikelihood.voxel_log_likelihood`.
        """
        self._check_fitted()
        if not isinstance(data, BiasData):
            raise ValueError(f"data must be one BiasData. Received: {type(data).__name__}")
        d = data
        if abs(d.log_mass_threshold - self.log_mass_threshold) > 1e-9:
            raise ValueError(
                f"data mass threshold differs from the fitted one. Received: ln M_th={d.log_mass_threshold}, "
                f"fitted ln M_th={self.log_mass_threshold}"
            )
        rho = d.one_plus_delta.ravel()
        ln_n = self.log_number_density(rho[d.halo_voxel], d.halo_ln_mass, d.voxel_volume)
        return np.bincount(d.halo_voxel, weights=ln_n, minlength=rho.size) - self.rate(rho)

    def get_state(self) -> dict:
        """The fitted model as a JSON-able dict; :meth:`from_state` rebuilds it exactly.

        Example:
            >>> again = NeyrinckBias.from_state(baseline.get_state())
            >>> again.log_likelihood(test_data) == baseline.log_likelihood(test_data)
            True
        """
        self._check_fitted()
        return {"n_components": self.n_components, "n_starts": self.n_starts, "seed": self.seed,
                "count_params": [float(x) for x in self.count_params],
                "mass_params": [float(x) for x in self.mass_params],
                "log_mass_threshold": float(self.log_mass_threshold)}

    @classmethod
    def from_state(cls, state: dict) -> "NeyrinckBias":
        """A fitted :class:`NeyrinckBias` from :meth:`get_state`'s dict.

        Raises:
            ValueError: missing entries, parameter vectors of the wrong length or not finite.
        """
        try:
            model = cls(state["n_components"], state["n_starts"], state["seed"])
            count = np.asarray(state["count_params"], np.float64)
            mass = np.asarray(state["mass_params"], np.float64)
            lmt = float(state["log_mass_threshold"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"state must be a dict from NeyrinckBias.get_state(). Received: {state!r:.200}") from err
        if count.shape != (4,) or mass.shape != (3 * model.n_components,) or not (
                np.all(np.isfinite(count)) and np.all(np.isfinite(mass)) and np.isfinite(lmt)):
            raise ValueError("state must hold 4 finite count parameters and 3 finite mass parameters per component. "
                             f"Received: count_params={count.tolist()}, mass_params={mass.tolist()}")
        model.count_params, model.mass_params, model.log_mass_threshold = count, mass, lmt
        return model

    def get_params(self) -> dict:
        self._check_fitted()
        k = self.n_components
        ln_nbar, alpha, ln_a, eps = self.count_params
        logits, mu, log_s = np.split(self.mass_params, 3)
        w = np.exp(logits - special.logsumexp(logits))
        return {
            "Nbar": float(np.exp(ln_nbar)), "alpha": float(alpha), "A": float(np.exp(ln_a)),
            "epsilon": float(eps), "mass_weights": w.tolist(), "mass_mu": mu.tolist(),
            "mass_sigma": np.exp(log_s).tolist(), "n_components": k,
        }
