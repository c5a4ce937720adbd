"""The joint posterior of the initial white noise and the neural bias parameters.

Field-level inference in the form of BORG as used by Charnock, Lavaux, Wandelt,
Sarma Boruah, Jasche & Hudson (2020), "Neural physical engines for inferring
the halo mass distribution function", MNRAS 494, 50, arXiv:1909.06379
(sections 4-5): the unknowns are the white noise ``omega`` of the initial
conditions on the inference grid and the ``P`` parameters ``theta`` of the
neural bias model, and

    ln p(omega, theta | halos) = -|omega|^2 / 2 - (n^3 / 2) ln 2 pi          (omega ~ N(0, I))
                                 + sum_i ln Normal(theta_i; 0, s^2)           (s = prior_scale)
                                 + ln L(halos | rho(omega), theta)            (paper eq. 16)

with ``rho(omega)`` the LPT density of :class:`~tfhalo.field.forward.LPTForwardModel`
and ``ln L`` the Poisson likelihood of :mod:`tfhalo.bias.likelihood`, evaluated
on ``ln max(rho, density_floor)``: the same transform
:func:`tfhalo.bias.fields.make_bias_data` applies to a density grid, so a bias
fit on a given field and this likelihood at that field agree.

The halo data are a :class:`FieldCatalogue`: positions and ln masses above the
threshold, binned to voxels exactly as :func:`~tfhalo.bias.fields.make_bias_data`
bins them (nearest grid point, wrapped).

Everything evaluated per state uses ``keras.ops`` only, so the target runs on
the TensorFlow and JAX backends (JAX needs ``jax_enable_x64`` for float64).

Example:
    >>> from tfhalo.field.forward import LPTForwardModel
    >>> from tfhalo.bias import build_model
    >>> forward = LPTForwardModel(8, 32.0)
    >>> cat = FieldCatalogue.from_halos(centres, masses, 32.0, 8, 1e12)
    >>> model = build_model(cat.log_mass_threshold, 8, dtype="float64")
    >>> post = FieldLevelPosterior(forward, model, cat)
    >>> state = post.join(omega[None], theta[None])        # (1, 8**3 + 17)
    >>> post.log_prob(state)                                # (1,)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from keras import ops

from tfhalo.bias.fields import DEFAULT_DENSITY_FLOOR, BiasData, halo_voxels, make_bias_data
from tfhalo.bias.likelihood import (DEFAULT_PRIOR_SCALE, ParameterLayout, _grid_terms, log_prior,
                                    params_from_responses, stock_npe_variables)
from tfhalo.validation import check_float, check_float_array, check_int

__all__ = ["FieldCatalogue", "FieldLevelPosterior", "log_density_of"]

# Relative tolerance on box sizes that must be "the same box": two floats
# computed from one configuration agree far better than this.
_BOX_RTOL = 1e-9


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


def _check_positions(name: str, positions, box_size: float) -> np.ndarray:
    positions = check_float_array(name, positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{name} must have shape (H, 3). Received: {name}.shape={positions.shape}")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} must be finite. Received: {int(bad.sum())} halos with a NaN or infinite "
            f"coordinate, e.g. {name}[{i}]={positions[i].tolist()}"
        )
    outside = ~np.all((positions >= 0) & (positions < box_size), axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"{name} must lie inside the box [0, box_size={box_size}). Received: {int(outside.sum())} "
            f"halos outside, e.g. {name}[{i}]={positions[i].tolist()}"
        )
    return positions


# eq=False: fields are arrays, and identity is the only meaningful equality of a data set.
@dataclasses.dataclass(frozen=True, eq=False)
class FieldCatalogue:
    """A halo catalogue on the inference grid: the data of the field-level likelihood.

    All arrays are read-only copies. ``halo_voxel`` is derived, never passed.

    Attributes:
        positions: ``(H, 3)`` float64 halo centres, Mpc/h, inside ``[0, box_size)``.
        ln_mass: ``(H,)`` float64 ``ln M`` (M in Msun/h), all ``>= log_mass_threshold``.
        box_size: periodic box side, Mpc/h.
        n_grid: voxels per side of the inference grid.
        log_mass_threshold: ``ln M_th``.
        halo_voxel: ``(H,)`` int64 flat (C-order) index of each halo's voxel:
            its nearest grid point ``round(x n / L) mod n``, as
            :func:`tfhalo.bias.fields.make_bias_data` bins halos.

    Raises:
        ValueError: naming the field: positions not ``(H, 3)``, non-finite or
            outside the box; ``ln_mass`` not ``(H,)``, non-finite or below the
            threshold; no halo; ``box_size``/``log_mass_threshold`` not finite
            (positive); ``n_grid`` not a positive integer.

    Example:
        >>> cat = FieldCatalogue.from_halos([[1.0, 1.0, 9.0]], [2e12], 10.0, 4, 1e12)
        >>> int(cat.halo_voxel[0])   # nearest grid point (0, 0, 4) wraps to (0, 0, 0)
        0
    """

    positions: np.ndarray
    ln_mass: np.ndarray
    box_size: float
    n_grid: int
    log_mass_threshold: float
    halo_voxel: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        box_size = check_float("box_size", self.box_size, positive=True)
        n_grid = check_int("n_grid", self.n_grid, minimum=1)
        lmt = check_float("log_mass_threshold", self.log_mass_threshold)
        positions = _check_positions("positions", self.positions, box_size)
        ln_mass = check_float_array("ln_mass", self.ln_mass)
        if ln_mass.ndim != 1 or ln_mass.shape[0] != positions.shape[0]:
            raise ValueError(
                f"ln_mass must have shape (H,) with H = len(positions) = {positions.shape[0]}. "
                f"Received: ln_mass.shape={ln_mass.shape}"
            )
        bad = ~np.isfinite(ln_mass)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"ln_mass must be finite. Received: {int(bad.sum())} non-finite, e.g. ln_mass[{i}]={ln_mass[i]}"
            )
        if ln_mass.shape[0] == 0:
            raise ValueError("the catalogue needs at least one halo: the likelihood is empty. Received: 0 halos")
        below = ln_mass < lmt
        if below.any():
            i = int(np.argmax(below))
            raise ValueError(
                f"ln_mass must be >= log_mass_threshold={lmt}. Received: {int(below.sum())} halos below, "
                f"e.g. ln_mass[{i}]={ln_mass[i]}"
            )
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("box_size", box_size)
        set_("n_grid", n_grid)
        set_("log_mass_threshold", lmt)
        set_("positions", _readonly(positions))
        set_("ln_mass", _readonly(ln_mass))
        set_("halo_voxel", _readonly(halo_voxels(positions, box_size, n_grid)))

    @classmethod
    def from_halos(cls, centres, masses, box_size: float, n_grid: int, mass_threshold: float) -> "FieldCatalogue":
        """The halos with ``mass >= mass_threshold`` of a catalogue.

        Args:
            centres: ``(H, 3)`` halo centres in Mpc/h, inside ``[0, box_size)``
                (wrap them with :func:`tfhalo.sim.grid.wrap_periodic` first).
            masses: ``(H,)`` finite positive masses, Msun/h.
            box_size: box side, Mpc/h.
            n_grid: voxels per side of the inference grid.
            mass_threshold: ``M_th`` in Msun/h.

        Returns:
            A :class:`FieldCatalogue` with ``log_mass_threshold = ln(mass_threshold)``.

        Raises:
            ValueError: naming the argument, before any binning: centres not
                ``(H, 3)``, non-finite or outside the box; masses not ``(H,)``,
                non-finite or non-positive; a bad ``box_size``, ``n_grid`` or
                ``mass_threshold``; no halo with ``mass >= mass_threshold``.

        Example:
            >>> cat = FieldCatalogue.from_halos(centres, masses, 128.0, 32, 2e12)
        """
        box_size = check_float("box_size", box_size, positive=True)
        n_grid = check_int("n_grid", n_grid, minimum=1)
        mass_threshold = check_float("mass_threshold", mass_threshold, positive=True)
        centres = _check_positions("centres", centres, box_size)
        masses = check_float_array("masses", masses)
        if masses.ndim != 1 or masses.shape[0] != centres.shape[0]:
            raise ValueError(
                f"masses must have shape (H,) with H = len(centres) = {centres.shape[0]}. "
                f"Received: masses.shape={masses.shape}"
            )
        bad = ~(np.isfinite(masses) & (masses > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"masses must be finite and positive. Received: {int(bad.sum())} bad masses, "
                f"e.g. masses[{i}]={masses[i]}"
            )
        keep = masses >= mass_threshold
        if not keep.any():
            raise ValueError(
                f"no halo above the mass threshold: the likelihood needs at least one. Received: "
                f"mass_threshold={mass_threshold:.6g}, {masses.size} halos, max mass="
                f"{float(masses.max()) if masses.size else None}"
            )
        lmt = math.log(mass_threshold)
        # ln of a mass >= M_th can round below ln M_th: the kept halos are above it by definition.
        ln_mass = np.maximum(np.log(masses[keep]), lmt)
        return cls(centres[keep], ln_mass, box_size, n_grid, lmt)

    @property
    def n_halos(self) -> int:
        return int(self.ln_mass.shape[0])

    @property
    def mass_threshold(self) -> float:
        return float(math.exp(self.log_mass_threshold))

    @property
    def voxel_size(self) -> float:
        return self.box_size / self.n_grid

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel, (Mpc/h)^3."""
        return float(self.voxel_size**3)

    def halo_counts(self) -> np.ndarray:
        """``(n, n, n)`` number of halos per voxel."""
        return np.bincount(self.halo_voxel, minlength=self.n_grid**3).reshape((self.n_grid,) * 3)

    def halo_mass_field(self) -> np.ndarray:
        """``(n, n, n)`` total halo mass per voxel, Msun/h."""
        field = np.bincount(self.halo_voxel, weights=np.exp(self.ln_mass), minlength=self.n_grid**3)
        return field.reshape((self.n_grid,) * 3)

    def to_bias_data(
        self, one_plus_delta, density_floor: float = DEFAULT_DENSITY_FLOOR, name: str = "field"
    ) -> BiasData:
        """These halos on a given density grid, as :class:`~tfhalo.bias.fields.BiasData` for a bias fit.

        Args:
            one_plus_delta: ``(n_grid,)*3`` density over the mean.
            density_floor: floor on ``1 + delta``.
            name: a label.

        Returns:
            ``make_bias_data(one_plus_delta, positions, exp(ln_mass), box_size, M_th)``;
            its ``halo_voxel`` equals this catalogue's.
        """
        rho = np.asarray(one_plus_delta, dtype=np.float64)
        if rho.shape != (self.n_grid,) * 3:
            raise ValueError(
                f"one_plus_delta must have shape {(self.n_grid,) * 3}. Received: one_plus_delta.shape={rho.shape}"
            )
        # Masses exp(ln M) can round below M_th = exp(ln M_th); the threshold passed
        # is the smallest of them so that make_bias_data keeps every halo.
        masses = np.exp(self.ln_mass)
        return make_bias_data(
            rho, self.positions, masses, self.box_size, min(self.mass_threshold, float(masses.min())),
            density_floor, name=name,
        )


def log_density_of(density, density_floor: float):
    """``ln max(1 + delta, density_floor)``: the model input, as :func:`make_bias_data` computes it.

    ``keras.ops``; the gradient is 0 where the density is below the floor.
    """
    return ops.log(ops.maximum(density, ops.cast(density_floor, density.dtype)))


def _model_params(model, layout, theta, log_density):
    """Mixture parameters ``(1, n, n, n, 3K)`` of one flat ``theta (P,)`` on one ``(1, n, n, n)`` grid."""
    trainable = layout.unflatten(theta)
    non_trainable = [v.value for v in model.non_trainable_variables]
    x = ops.expand_dims(ops.cast(log_density, layout.dtype), -1)
    params, _ = model.stateless_call(trainable, non_trainable, x)
    return params


def _check_forward(forward):
    for attr in ("n_grid", "box_size", "density", "linear_field", "__call__"):
        if not hasattr(forward, attr):
            raise ValueError(
                f"forward must be an LPTForwardModel (with n_grid, box_size, density, linear_field, __call__). "
                f"Received: forward of type {type(forward).__name__}"
            )
    return forward


def _prepare_model(model, n_grid: int, log_mass_threshold: float):
    if not hasattr(model, "stateless_call") or not hasattr(model, "head"):
        raise ValueError(
            f"model must be a tfhalo.bias.NeuralBiasModel. Received: model of type {type(model).__name__}"
        )
    if abs(model.log_mass_threshold - log_mass_threshold) > 1e-6:
        raise ValueError(
            "model.log_mass_threshold must equal the catalogue's log_mass_threshold. Received: "
            f"model.log_mass_threshold={model.log_mass_threshold}, catalogue.log_mass_threshold={log_mass_threshold}"
        )
    if not model.built:
        model.build((None, n_grid, n_grid, n_grid, 1))
    return model, ParameterLayout(model)


class FieldLevelPosterior:
    """``ln p(omega, theta | halos)`` of the white noise and the bias parameters (see module docstring).

    States are flat: ``state (C, n^3 + P) = [omega.reshape(C, n^3), theta]``, one
    row per chain. The bias model evaluates one parameter vector per call, so
    chains go through it one at a time (a Python loop over the static ``C``).

    Args:
        forward: a :class:`~tfhalo.field.forward.LPTForwardModel` (any object
            with ``n_grid``, ``box_size``, ``linear_field`` and ``density``).
        model: a :class:`~tfhalo.bias.model.NeuralBiasModel` with
            ``log_mass_threshold`` equal to the catalogue's; built here if needed.
        catalogue: a :class:`FieldCatalogue` on the forward model's grid and box.
        prior_scale: standard deviation of the Normal prior on each bias parameter.
        density_floor: floor on ``1 + delta`` before the log (as ``make_bias_data``).

    Raises:
        ValueError: naming the argument: wrong types, a catalogue on another
            grid (``n_grid``) or box (voxel size ``box_size / n_grid``), a
            threshold mismatch, a non-positive ``prior_scale`` or ``density_floor``.

    Example:
        >>> post = FieldLevelPosterior(forward, model, catalogue)
        >>> lp = post.log_prob(state)                    # (C,)
        >>> omega, theta = post.split(state)             # (C, n, n, n), (C, 17)
        >>> figs = post.fields(state)                    # NumPy dict
    """

    def __init__(self, forward, model, catalogue, prior_scale: float = DEFAULT_PRIOR_SCALE,
                 density_floor: float = DEFAULT_DENSITY_FLOOR):
        _check_forward(forward)
        if not isinstance(catalogue, FieldCatalogue):
            raise ValueError(
                f"catalogue must be a FieldCatalogue. Received: catalogue of type {type(catalogue).__name__}"
            )
        self.prior_scale = check_float("prior_scale", prior_scale, positive=True)
        self.density_floor = check_float("density_floor", density_floor, positive=True)
        n = int(forward.n_grid)
        if n != catalogue.n_grid:
            raise ValueError(
                f"catalogue.n_grid must equal forward.n_grid={n}. Received: catalogue.n_grid={catalogue.n_grid}"
            )
        box = float(forward.box_size)
        if abs(box - catalogue.box_size) > _BOX_RTOL * box:
            raise ValueError(
                f"catalogue.box_size must equal forward.box_size={box} (voxel size {box / n} Mpc/h). Received: "
                f"catalogue.box_size={catalogue.box_size} (voxel size {catalogue.voxel_size} Mpc/h)"
            )
        self.forward = forward
        self.catalogue = catalogue
        self.model, self.layout = _prepare_model(model, n, catalogue.log_mass_threshold)
        self.n_grid = n
        self._voxel = ops.convert_to_tensor(catalogue.halo_voxel, dtype="int32")
        self._ln_mass = ops.convert_to_tensor(catalogue.ln_mass, dtype=self.layout.dtype)
        self._n_npe = stock_npe_variables(self.model)

    @property
    def n_field(self) -> int:
        return self.n_grid**3

    @property
    def n_bias(self) -> int:
        return self.layout.size

    @property
    def size(self) -> int:
        """Length of one flat state: ``n^3 + P``."""
        return self.n_field + self.n_bias

    def parameter_names(self) -> list:
        """Names of the ``P`` bias parameters (``ParameterLayout.names()``), in state order after the field.

        The ``n^3`` field coordinates are not named: a per-voxel name list
        (``omega[i,j,k]``) is too long to be useful in summaries; they are
        ``state[:, :n^3]`` in C order.
        """
        return self.layout.names()

    def _check_state(self, state):
        state = ops.convert_to_tensor(state)
        if len(state.shape) != 2 or state.shape[-1] != self.size:
            raise ValueError(
                f"state must have shape (C, {self.size}) = (chains, n^3 + n_bias). "
                f"Received: state.shape={tuple(state.shape)}"
            )
        return state

    def split(self, state):
        """``(C, size)`` -> ``(omega (C, n, n, n), theta (C, P))``."""
        state = self._check_state(state)
        n = self.n_grid
        omega = ops.reshape(state[:, : self.n_field], (-1, n, n, n))
        return omega, state[:, self.n_field:]

    def join(self, omega, theta):
        """``omega (C, n, n, n)``, ``theta (C, P)`` -> ``(C, size)``."""
        omega = ops.convert_to_tensor(omega)
        theta = ops.convert_to_tensor(theta)
        n = self.n_grid
        if len(omega.shape) != 4 or tuple(omega.shape[1:]) != (n, n, n):
            raise ValueError(f"omega must have shape (C, {n}, {n}, {n}). Received: omega.shape={tuple(omega.shape)}")
        if len(theta.shape) != 2 or theta.shape[-1] != self.n_bias or theta.shape[0] != omega.shape[0]:
            raise ValueError(
                f"theta must have shape (C={omega.shape[0]}, {self.n_bias}). Received: theta.shape={tuple(theta.shape)}"
            )
        theta = ops.cast(theta, omega.dtype)
        return ops.concatenate([ops.reshape(omega, (-1, self.n_field)), theta], axis=-1)

    def log_density(self, omega):
        """``(C, n, n, n)``: ``ln max(1 + delta, floor)`` of the LPT density of ``omega``.

        In the bias model's dtype whatever the forward model computes in, so that a float32
        forward model (faster) feeds the same float64 bias model and likelihood.
        """
        return ops.cast(log_density_of(self.forward.density(omega), self.density_floor), self.layout.dtype)

    def _chain_terms(self, log_density, theta, responses=None):
        """Per chain ``(halo_term, expected_count)``, each ``(C,)``.

        With ``responses`` (the NPE's basis responses to ``log_density``) the mixture parameters
        come from them, without the convolution.
        """
        halo, expected = [], []
        for c in range(int(theta.shape[0])):
            if responses is None:
                params = _model_params(self.model, self.layout, theta[c], log_density[c:c + 1])
            else:
                params = params_from_responses(self.model, self._n_npe, self.layout.unflatten(theta[c]),
                                               [r[c:c + 1] for r in responses])
            h, e = _grid_terms(self.model.head, params, self._voxel, self._ln_mass, self.catalogue.voxel_volume)
            halo.append(h)
            expected.append(e)
        return ops.stack(halo), ops.stack(expected)

    def log_likelihood(self, omega, theta):
        """``(C,)`` ln L of paper eq. 16 at ``omega (C, n, n, n)``, ``theta (C, P)``."""
        omega = ops.convert_to_tensor(omega)
        theta = ops.convert_to_tensor(theta)
        if theta.shape[0] != omega.shape[0]:
            raise ValueError(
                f"omega and theta must have one row per chain. Received: omega.shape={tuple(omega.shape)}, "
                f"theta.shape={tuple(theta.shape)}"
            )
        halo, expected = self._chain_terms(self.log_density(omega), theta)
        return ops.cast(halo - expected, omega.dtype)

    def bias_log_prob(self, log_density, theta):
        """``(C,)`` ln p(theta | field) up to a constant: the bias prior plus eq. 16 given the field.

        The bias parameters see the white noise only through the model input
        ``log_density = self.log_density(omega)``, so a blocked sampler computes it once
        per sweep and then moves ``theta`` without running the forward model (see
        :meth:`bias_conditional`, which also does the NPE's convolution once).  Equals
        :meth:`log_prob` less the white noise's prior term.

        Args:
            log_density: ``(C, n, n, n)`` model input of each chain's field.
            theta: ``(C, n_bias)``.
        """
        return self.bias_conditional(log_density)(theta)

    def bias_conditional(self, log_density):
        """``theta (C, n_bias) -> (C,)``: :meth:`bias_log_prob` on a fixed ``log_density``.

        With the stock NPE (a :class:`~tfhalo.layers.MultipoleConv3D`), its basis
        responses to ``log_density`` are computed here, once
        (:meth:`~tfhalo.layers.MultipoleConv3D.basis_responses`): the NPE is linear in
        its radial weights, so each call of the returned function is a small
        contraction, without the convolution or its kernel gradient, for a bias kernel
        that takes many gradients per sweep given one field (NUTS, HMC).  The saving is
        the convolution's share of a gradient, small at 16^3 (the mixture head
        dominates).  Equal to the direct evaluation up to rounding.

        Args:
            log_density: ``(C, n, n, n)`` model input of each chain's field.

        Returns:
            A function of ``theta (C, n_bias)`` giving ``(C,)``.

        Example:
            >>> f = post.bias_conditional(post.log_density(omega))   # once per sweep
            >>> lp = f(theta)                                        # (C,), no convolution
        """
        log_density = ops.convert_to_tensor(log_density)
        n_chains = int(log_density.shape[0])
        dtype = self.layout.dtype
        responses = None
        if self._n_npe is not None:
            x = ops.expand_dims(ops.cast(log_density, dtype), -1)
            responses = self.model.npe.basis_responses(x)

        def conditional(theta):
            theta = ops.convert_to_tensor(theta)
            if int(theta.shape[0]) != n_chains:
                raise ValueError(f"theta must have one row per chain of log_density ({n_chains}). "
                                 f"Received: theta.shape={tuple(theta.shape)}")
            halo, expected = self._chain_terms(log_density, theta, responses)
            return log_prior(theta, self.prior_scale) + ops.cast(halo - expected, theta.dtype)

        return conditional

    def white_noise_log_prior(self, omega):
        """``(C,)`` normalised ``ln N(omega; 0, I)`` of ``omega (C, n^3)``."""
        return -0.5 * ops.sum(ops.square(omega), axis=-1) - 0.5 * self.n_field * math.log(2.0 * math.pi)

    def log_prob(self, state):
        """``(C,)`` normalised log prior + ln L at ``state (C, size)`` (unnormalised posterior)."""
        state = self._check_state(state)
        omega, theta = self.split(state)
        field_prior = self.white_noise_log_prior(state[:, : self.n_field])
        bias_prior = log_prior(theta, self.prior_scale)
        return field_prior + bias_prior + self.log_likelihood(omega, theta)

    def fields(self, state) -> dict:
        """NumPy float64 fields of each chain's state, for figures (not differentiable).

        Args:
            state: ``(C, size)``.

        Returns:
            dict with ``delta_lin (C,n,n,n)`` (linear field at a = 1),
            ``density (C,n,n,n)`` (LPT ``1 + delta``), ``log_density (C,n,n,n)``
            (the floored model input), ``psi (C,n,n,n,F)`` (NPE output),
            ``params (C,n,n,n,3K)`` (mixture parameters), ``expected (C,n,n,n)``
            (``V int n dM``: expected halo count per voxel), and the data's
            ``halo_counts (C,n,n,n)`` and ``halo_mass (C,n,n,n)`` (Msun/h per
            voxel; the same for every chain, repeated so that every entry has
            the leading chain axis).
        """
        omega, theta = self.split(state)
        out = self.forward(omega)
        delta_lin, density = out["delta_lin"], out["density"]
        log_density = log_density_of(density, self.density_floor)
        n_npe = len(self.model.npe.trainable_variables)
        npe_non_trainable = [v.value for v in self.model.npe.non_trainable_variables]
        psi, params, expected = [], [], []
        for c in range(int(theta.shape[0])):
            trainable = self.layout.unflatten(theta[c])
            x = ops.expand_dims(ops.cast(log_density[c:c + 1], self.layout.dtype), -1)
            psi.append(self.model.npe.stateless_call(trainable[:n_npe], npe_non_trainable, x)[0][0])
            p = _model_params(self.model, self.layout, theta[c], log_density[c:c + 1])[0]
            params.append(p)
            expected.append(self.catalogue.voxel_volume * self.model.head.integral_above_threshold(p))

        def as_np(x):
            return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)

        return {
            "delta_lin": as_np(delta_lin),
            "density": as_np(density),
            "log_density": as_np(log_density),
            "psi": np.stack([as_np(p) for p in psi]),
            "params": np.stack([as_np(p) for p in params]),
            "expected": np.stack([as_np(e) for e in expected]),
            "halo_counts": np.repeat(self.catalogue.halo_counts()[None], len(psi), axis=0),
            "halo_mass": np.repeat(self.catalogue.halo_mass_field()[None], len(psi), axis=0),
        }
