"""Cosmology: defaults, validation, growth against ODE/colossus, power spectrum."""

import numpy as np
import pytest
from scipy.integrate import quad

from tfhalo.sim.cosmology import WMAP5, Cosmology


def test_defaults_are_paper_wmap5():
    c = Cosmology()
    assert (c.h, c.Om0, c.Ob0, c.sigma8, c.ns) == (0.701, 0.279, 0.045, 0.817, 0.96)
    assert c.OL0 == pytest.approx(0.721)
    assert c.rho_mean == pytest.approx(2.775e11 * 0.279, rel=1e-3)
    assert WMAP5 == c and hash(WMAP5) == hash(c)


def test_dict_round_trip():
    c = Cosmology(h=0.7, Om0=0.3, Ob0=0.05, sigma8=0.8, ns=0.97)
    assert Cosmology.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="Unknown cosmology parameters"):
        Cosmology.from_dict({"h": 0.7, "w0": -1})


@pytest.mark.parametrize(
    "kwargs,name",
    [({"h": -0.7}, "h"), ({"Om0": 0.0}, "Om0"), ({"Om0": 1.5}, "Om0"), ({"Ob0": 0.5}, "Ob0"),
     ({"sigma8": 0.0}, "sigma8"), ({"ns": float("nan")}, "ns")],
)
def test_bad_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}"):
        Cosmology(**kwargs)


def test_growth_factor_matches_integral_solution():
    # D(a) ∝ E(a) ∫_0^a da' / (a' E(a'))^3 in flat LCDM (Heath 1977)
    c = Cosmology(Om0=0.3)

    def d_int(a):
        return c.hubble(a) * quad(lambda x: 1.0 / (x * c.hubble(x)) ** 3, 0, a)[0]

    for a in (0.01, 0.1, 0.5, 0.8):
        assert c.growth_factor(a) == pytest.approx(d_int(a) / d_int(1.0), rel=1e-8)
    assert c.growth_factor(1.0) == pytest.approx(1.0)


def test_growth_rate_is_log_derivative():
    a = np.array([0.05, 0.2, 0.6, 1.0])
    eps = 1e-5
    num = (np.log(WMAP5.growth_factor(a * (1 + eps))) - np.log(WMAP5.growth_factor(a * (1 - eps)))) / (
        np.log1p(eps) - np.log1p(-eps)
    )
    np.testing.assert_allclose(WMAP5.growth_rate(a), num, rtol=1e-7)
    num2 = (np.log(-WMAP5.growth_factor_2(a * (1 + eps))) - np.log(-WMAP5.growth_factor_2(a * (1 - eps)))) / (
        np.log1p(eps) - np.log1p(-eps)
    )
    np.testing.assert_allclose(WMAP5.growth_rate_2(a), num2, rtol=1e-7)
    # matter domination limits: D ∝ a, D2 = -3/7 D^2
    assert WMAP5.growth_rate(1e-3) == pytest.approx(1.0, abs=1e-6)
    assert WMAP5.growth_factor_2(1e-3) / WMAP5.growth_factor(1e-3) ** 2 == pytest.approx(-3 / 7, rel=1e-6)


def test_colossus_object_agrees_and_becomes_current():
    from colossus.cosmology import cosmology as cc

    other = Cosmology(Om0=0.3, sigma8=0.9)
    cc_obj = WMAP5.to_colossus()
    assert cc.getCurrent() is cc_obj
    assert cc_obj.Om0 == pytest.approx(0.279) and cc_obj.H0 == pytest.approx(70.1)
    assert cc_obj.sigma8 == pytest.approx(0.817) and cc_obj.ns == pytest.approx(0.96)
    other.to_colossus()  # changes the global current cosmology ...
    # ... but tfhalo's own methods do not depend on it
    np.testing.assert_allclose(WMAP5.growth_factor(0.25), cc_obj.growthFactor(3.0), rtol=1e-4)
    assert cc_obj.sigma(8.0, 0.0) == pytest.approx(0.817, rel=1e-3)
    pk = WMAP5.linear_power(np.array([0.05, 0.5]), z=1.0)
    np.testing.assert_allclose(pk, cc_obj.matterPowerSpectrum(np.array([0.05, 0.5]), 1.0), rtol=1e-4)
    assert not np.allclose(other.linear_power(0.5), WMAP5.linear_power(0.5), rtol=1e-2)


def test_linear_power_scales_with_growth_squared():
    k = np.geomspace(0.01, 5, 7)
    ratio = WMAP5.linear_power(k, z=99.0) / WMAP5.linear_power(k, z=0.0)
    np.testing.assert_allclose(ratio, WMAP5.growth_factor(0.01) ** 2, rtol=1e-12)
    with pytest.raises(ValueError, match="k must be positive"):
        WMAP5.linear_power(np.array([0.0, 1.0]))


def test_linear_power_outside_colossus_range_is_a_value_error():
    from tfhalo.sim.cosmology import WMAP5

    with pytest.raises(ValueError, match=r"colossus cannot compute.*k in \[1, 1e\+31\]"):
        WMAP5.linear_power(np.array([1.0, 1e31]))
