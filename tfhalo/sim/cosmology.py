"""Flat LambdaCDM cosmology: linear power spectrum, growth, expansion.

The default is the WMAP5 cosmology of the deep-halo papers' simulations
(Lucie-Smith, Peiris, Pontzen & Lochner (2018), "Machine learning cosmological
structure formation", MNRAS 479, 3405, arXiv:1802.04271; Lucie-Smith, Peiris,
Pontzen, Nord & Thiyagalingam (2020), arXiv:2011.10577):
``h = 0.701, Om0 = 0.279, OL0 = 0.721, Ob0 = 0.045, sigma8 = 0.817, ns = 0.96``.
It is set explicitly, not through colossus' ``'WMAP5'`` preset (which differs).

Growth factors are computed for matter + Lambda (no radiation), the universe
that the particle-mesh code in :mod:`tfhalo.sim.pm` integrates, so that linear
theory and the N-body agree exactly; the colossus object made by
:meth:`Cosmology.to_colossus` is built with ``relspecies=False`` for the same
reason (its growth factor then equals :meth:`Cosmology.growth_factor`).

Example:
    >>> from tfhalo.sim.cosmology import WMAP5
    >>> pk = WMAP5.linear_power([0.1, 1.0], z=0.0)   # (Mpc/h)^3
    >>> d = WMAP5.growth_factor(0.01)                  # ~0.013
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict

import numpy as np
from scipy.special import hyp2f1

#: Critical density today, (Msun/h) / (Mpc/h)^3.
RHO_CRIT0 = 2.77536627e11

_COLOSSUS_CACHE: Dict["Cosmology", object] = {}


@dataclasses.dataclass(frozen=True)
class Cosmology:
    """Flat LambdaCDM parameters (frozen, hashable).

    Args:
        h: dimensionless Hubble constant, H0 = 100 h km/s/Mpc.
        Om0: matter density parameter today (CDM + baryons).
        Ob0: baryon density parameter today (enters the transfer function).
        sigma8: rms linear density fluctuation in 8 Mpc/h spheres at z = 0.
        ns: spectral index of the primordial power spectrum.

    Raises:
        ValueError: a parameter is outside its physical range.
    """

    h: float = 0.701
    Om0: float = 0.279
    Ob0: float = 0.045
    sigma8: float = 0.817
    ns: float = 0.96

    def __post_init__(self):
        checks = {
            "h": (0.0 < self.h < 10.0, "must be in (0, 10)"),
            "Om0": (0.0 < self.Om0 <= 1.0, "must be in (0, 1]"),
            "Ob0": (0.0 <= self.Ob0 < self.Om0, "must be in [0, Om0)"),
            "sigma8": (self.sigma8 > 0.0, "must be positive"),
            "ns": (0.0 < self.ns < 3.0, "must be in (0, 3)"),
        }
        for name, (ok, what) in checks.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number. Received: {name}={value!r}")
            if not ok:
                raise ValueError(f"{name} {what}. Received: {name}={value}")
        for name in ("h", "Om0", "Ob0", "sigma8", "ns"):
            object.__setattr__(self, name, float(getattr(self, name)))

    # ------------------------------------------------------------------ basics
    @property
    def OL0(self) -> float:
        """Dark-energy (Lambda) density parameter, ``1 - Om0`` (flat)."""
        return 1.0 - self.Om0

    @property
    def H0(self) -> float:
        """Hubble constant in km/s/Mpc."""
        return 100.0 * self.h

    @property
    def rho_mean(self) -> float:
        """Mean comoving matter density, (Msun/h) / (Mpc/h)^3."""
        return RHO_CRIT0 * self.Om0

    def to_dict(self) -> Dict[str, float]:
        """Plain dict of the constructor arguments (JSON/HDF5 friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Cosmology":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown cosmology parameters: {unknown}. Expected a subset of {sorted(names)}")
        return cls(**{k: float(v) for k, v in d.items()})

    # ------------------------------------------------------------- colossus
    def to_colossus(self, set_current: bool = True):
        """The matching colossus cosmology object.

        colossus keeps a global "current" cosmology used by module-level
        functions such as ``mass_function.massFunction``; with
        ``set_current=True`` (default) this object is made current, so call
        this right before such functions. Methods of the returned object do
        not depend on the global state.

        Returns:
            ``colossus.cosmology.cosmology.Cosmology``.
        """
        from colossus.cosmology import cosmology as cc

        obj = _COLOSSUS_CACHE.get(self)
        if obj is None:
            obj = cc.Cosmology(
                name=f"tfhalo_h{self.h}_Om{self.Om0}_Ob{self.Ob0}_s{self.sigma8}_n{self.ns}",
                flat=True,
                H0=self.H0,
                Om0=self.Om0,
                Ob0=self.Ob0,
                sigma8=self.sigma8,
                ns=self.ns,
                relspecies=False,
                persistence="",
                print_warnings=False,
            )
            _COLOSSUS_CACHE[self] = obj
        if set_current:
            cc.setCurrent(obj)
        return obj

    def linear_power(self, k, z: float = 0.0) -> np.ndarray:
        """Linear matter power spectrum (Eisenstein & Hu 1998, sigma8-normalised).

        Args:
            k: wave numbers in h/Mpc (any shape, > 0).
            z: redshift; P is scaled by ``growth_factor(1/(1+z))**2``.

        Returns:
            ``P(k)`` in (Mpc/h)^3, same shape as ``k``.

        Raises:
            ValueError: ``k`` not positive, ``z <= -1``, or ``k`` outside the
                range colossus tabulates (about 1e-20 to 1e20 h/Mpc).
        """
        k = np.asarray(k, dtype=np.float64)
        if np.any(~(k > 0)):
            raise ValueError(f"k must be positive. Received: k with min {float(np.min(k)):.3g}")
        if not z > -1:
            raise ValueError(f"z must be > -1. Received: z={z}")
        try:
            pk0 = self.to_colossus(set_current=False).matterPowerSpectrum(k.ravel(), 0.0, model="eisenstein98")
        except Exception as err:  # colossus raises a bare Exception for k outside its table
            raise ValueError(
                f"colossus cannot compute the linear power spectrum for k in [{float(np.min(k)):.3g}, "
                f"{float(np.max(k)):.3g}] h/Mpc: {err}. Received: k with that range"
            ) from err
        d = self.growth_factor(1.0 / (1.0 + z))
        return np.asarray(pk0, dtype=np.float64).reshape(k.shape) * d**2

    # ---------------------------------------------------------------- growth
    def hubble(self, a) -> np.ndarray:
        """Dimensionless expansion rate ``E(a) = H(a) / H0``."""
        a = np.asarray(a, dtype=np.float64)
        return np.sqrt(self.Om0 / a**3 + self.OL0)

    def omega_m(self, a) -> np.ndarray:
        """Matter density parameter at scale factor ``a``."""
        a = np.asarray(a, dtype=np.float64)
        return self.Om0 / (a**3 * self.hubble(a) ** 2)

    def _growth_unnormalised(self, a):
        # Exact linear growth in flat LCDM: D ∝ a 2F1(1/3, 1; 11/6; -a^3 OL/Om).
        x = -(a**3) * self.OL0 / self.Om0
        return a * hyp2f1(1.0 / 3.0, 1.0, 11.0 / 6.0, x), x

    def growth_factor(self, a) -> np.ndarray:
        """Linear growth factor ``D1(a)``, normalised to ``D1(1) = 1``."""
        a = np.asarray(a, dtype=np.float64)
        d, _ = self._growth_unnormalised(a)
        d1, _ = self._growth_unnormalised(1.0)
        return d / d1

    def growth_rate(self, a) -> np.ndarray:
        """Linear growth rate ``f1 = dln D1 / dln a``."""
        a = np.asarray(a, dtype=np.float64)
        x = -(a**3) * self.OL0 / self.Om0
        f = hyp2f1(1.0 / 3.0, 1.0, 11.0 / 6.0, x)
        # d/dx 2F1(a,b;c;x) = ab/c 2F1(a+1,b+1;c+1;x)
        df = (2.0 / 11.0) * hyp2f1(4.0 / 3.0, 2.0, 17.0 / 6.0, x)
        return 1.0 + 3.0 * x * df / f

    def growth_factor_2(self, a) -> np.ndarray:
        """Second-order growth ``D2(a) ≈ -3/7 D1^2 Om(a)^(-1/143)`` (negative)."""
        a = np.asarray(a, dtype=np.float64)
        return -3.0 / 7.0 * self.growth_factor(a) ** 2 * self.omega_m(a) ** (-1.0 / 143.0)

    def growth_rate_2(self, a) -> np.ndarray:
        """``f2 = dln D2 / dln a`` of :meth:`growth_factor_2` (exact derivative)."""
        a = np.asarray(a, dtype=np.float64)
        # dln Om(a)/dln a = -3 (1 - Om(a)) in flat LCDM
        return 2.0 * self.growth_rate(a) + 3.0 * (1.0 - self.omega_m(a)) / 143.0


WMAP5 = Cosmology()
