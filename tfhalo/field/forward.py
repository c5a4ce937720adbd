"""Differentiable LPT forward model in ``keras.ops``: white noise -> linear field -> 2LPT -> CIC density.

The same chain as :mod:`tfhalo.sim` (NumPy) written with ``keras.ops`` only, so
that it is differentiable and runs on the TensorFlow and JAX backends (JAX needs
``jax_enable_x64`` for float64):

1. white noise ``omega`` ``(B, n, n, n)``, unit normals on the lattice;
2. the linear density contrast at ``a = 1``,
   ``delta_L = irfftn(rfftn(omega) sqrt(P(k) n^3 / V))`` with the ``k = 0`` mode zero,
   as :func:`tfhalo.sim.ics.gaussian_field`;
3. first- and second-order Lagrangian displacements ``psi1 = -grad phi1``,
   ``psi2 = +grad phi2`` (Scoccimarro 1998), as :func:`tfhalo.sim.ics.lpt_displacements`;
4. particle positions ``x = q + D1(a) psi1 + D2(a) psi2`` wrapped into ``[0, L)``,
   as :func:`tfhalo.sim.ics.lpt_state`;
5. cloud-in-cell painting of the ``n^3`` particles onto the ``n^3`` grid, divided
   by its mean: ``1 + delta``, as :func:`tfhalo.bias.fields.density_field` with
   ``source="lpt"``.

This is the forward model of the field-level inference of Charnock, Lavaux,
Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural physical engines for
inferring the halo mass distribution function", MNRAS 494, 50,
arXiv:1909.06379, which follows BORG: Jasche & Wandelt (2013), "Bayesian
physical reconstruction of initial conditions from large-scale structure
surveys", MNRAS 432, 894, arXiv:1203.3639. 2LPT: Scoccimarro (1998),
"Transients from initial conditions: a perturbative analysis", MNRAS 299,
1097, arXiv:astro-ph/9711187.

Every map is smooth in ``omega`` except CIC, which is piecewise linear in the
positions (the periodic wrap ``x - L floor(x / L)`` has unit derivative), so
gradients of any smooth function of the density with respect to ``omega``
exist almost everywhere.

Example:
    >>> import numpy as np
    >>> from tfhalo.sim.ics import white_noise
    >>> model = LPTForwardModel(16, 64.0)                 # 2LPT to a = 1, float64
    >>> omega = white_noise(16, seed=3)[None]             # (1, 16, 16, 16)
    >>> out = model(omega)        # delta_lin (1, 16, 16, 16), positions (1, 4096, 3), density (1, 16, 16, 16)
"""

from __future__ import annotations


import keras
import numpy as np
import scipy.fft
from keras import ops

from tfhalo.field.fft import irfft3, rfft3
from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.grid import derivative_wavenumbers, lattice_positions, rfft_wavenumbers
from tfhalo.sim.ics import _tabulated_power
from tfhalo.validation import check_choice, check_finite_array, check_float, check_int

__all__ = ["linear_amplitude", "cic_paint", "LPTForwardModel", "truncate_white_noise"]

DTYPES = ("float32", "float64")
ORDERS = (1, 2)


def _check_cosmology(cosmology) -> Cosmology:
    if not isinstance(cosmology, Cosmology):
        raise ValueError(f"cosmology must be a tfhalo Cosmology. Received: cosmology={cosmology!r}")
    return cosmology


def linear_amplitude(n: int, box_size: float, cosmology: Cosmology = WMAP5, z: float = 0.0) -> np.ndarray:
    """Per-mode amplitude ``sqrt(P(k) n^3 / V)`` that turns white noise into the linear field.

    With NumPy's unnormalised FFT, ``rfftn(omega) * amplitude`` has
    ``<|delta_k|^2> = P(k) n^6 / V``, i.e. ``P(k) / V`` per mode in the
    continuum normalisation: the convention of
    :func:`tfhalo.sim.ics.gaussian_field`, whose tabulated ``P(k)`` it shares.

    Args:
        n: mesh cells per side (>= 2).
        box_size: box side ``V^(1/3)``, Mpc/h.
        cosmology: a :class:`~tfhalo.sim.cosmology.Cosmology`.
        z: redshift of the linear power spectrum (> -1).

    Returns:
        ``(n, n, n // 2 + 1)`` float64 array on the ``rfftn`` half-spectrum; 0 at ``k = 0``.

    Example:
        >>> amp = linear_amplitude(8, 32.0)
        >>> amp.shape
        (8, 8, 5)
    """
    n = check_int("n", n, minimum=2)
    box_size = check_float("box_size", box_size, positive=True)
    _check_cosmology(cosmology)
    z = check_float("z", z)
    if not z > -1:
        raise ValueError(f"z must be > -1. Received: z={z}")
    kx, ky, kz = rfft_wavenumbers(n, box_size)
    kmag = np.sqrt(kx**2 + ky**2 + kz**2)
    kmag[0, 0, 0] = 1.0  # placeholder; the mean mode carries no power
    amp = np.sqrt(_tabulated_power(cosmology, kmag, z) * n**3 / box_size**3)
    amp[0, 0, 0] = 0.0
    return amp


def _floor(x):
    """``floor(x)`` in the dtype of ``x``, with zero derivative.

    ``keras.ops.floor`` on the JAX backend casts float64 to float32 (Keras
    demotes 64-bit floats to 32 bits there even with x64 on), which would put a
    particle within a float32 rounding error of a cell face into the wrong cell;
    ``floor_divide`` by 1 keeps the dtype on every backend and is exact.
    """
    return ops.floor_divide(x, ops.ones((), dtype=x.dtype))


def _wrap(x, box_size):
    """``x - L floor(x / L)``: into ``[0, L)`` with unit derivative (floor has none)."""
    return x - box_size * _floor(x / box_size)


def cic_paint(positions, n_grid: int, box_size: float):
    """Cloud-in-cell mass assignment (unit mass per particle) on a periodic grid, batched.

    The convention of :class:`tfhalo.sim.mesh.CICStencil`: cell ``(i, j, k)``
    sits at ``(i, j, k) L / n``; a particle at ``s = x n / L`` puts weight
    ``prod_d (1 - f_d)`` (or ``f_d``) in the cells ``floor(s_d)`` (or
    ``floor(s_d) + 1``, periodic), ``f = s - floor(s)``. Positions may be any
    real values (they are wrapped). The weights are piecewise linear in the
    positions, so gradients flow to them; the cell indices carry none.

    Args:
        positions: ``(B, N, 3)`` (or ``(N, 3)``) float tensor, Mpc/h.
        n_grid: cells per side.
        box_size: box side, Mpc/h.

    Returns:
        ``(B, n, n, n)`` (or ``(n, n, n)``) mass per cell in the dtype of
        ``positions``; each batch element sums to ``N``.

    Example:
        >>> pos = np.random.default_rng(0).uniform(0, 10.0, (2, 100, 3))
        >>> mesh = cic_paint(pos, 8, 10.0)                 # (2, 8, 8, 8), sums to 100 each
    """
    n = check_int("n_grid", n_grid, minimum=1)
    box_size = check_float("box_size", box_size, positive=True)
    positions = ops.convert_to_tensor(positions)
    if not keras.backend.is_float_dtype(positions.dtype):
        positions = ops.cast(positions, keras.config.floatx())
    rank = len(positions.shape)
    if rank not in (2, 3) or positions.shape[-1] != 3:
        raise ValueError(f"positions must have shape (B, N, 3) or (N, 3). Received: positions.shape={positions.shape}")
    if rank == 2:
        return cic_paint(positions[None], n, box_size)[0]
    batch = positions.shape[0]
    if batch is None:  # unknown batch under tracing: the segment count becomes a tensor
        batch = ops.shape(positions)[0]
    n3 = n**3

    scaled = positions * (n / box_size)
    cell = _floor(scaled)
    frac = scaled - cell
    i0 = ops.mod(ops.cast(cell, "int32"), n)
    i1 = ops.mod(i0 + 1, n)
    strides = (n * n, n, 1)
    lo = [i0[..., d] * strides[d] for d in range(3)]
    hi = [i1[..., d] * strides[d] for d in range(3)]
    w_hi = [frac[..., d] for d in range(3)]
    w_lo = [1.0 - w for w in w_hi]
    index, weight = [], []
    for dx in (0, 1):
        for dy in (0, 1):
            ixy = (hi[0] if dx else lo[0]) + (hi[1] if dy else lo[1])
            wxy = (w_hi[0] if dx else w_lo[0]) * (w_hi[1] if dy else w_lo[1])
            for dz in (0, 1):
                index.append(ixy + (hi[2] if dz else lo[2]))
                weight.append(wxy * (w_hi[2] if dz else w_lo[2]))
    index = ops.stack(index, axis=1)  # (B, 8, N)
    weight = ops.stack(weight, axis=1)
    # one flat segment space for the whole batch: element b owns cells [b n^3, (b + 1) n^3)
    offset = ops.reshape(ops.arange(batch, dtype="int32") * n3, (-1, 1, 1))
    mesh = ops.segment_sum(
        ops.reshape(weight, (-1,)), ops.reshape(index + offset, (-1,)), num_segments=batch * n3
    )
    return ops.reshape(mesh, (-1, n, n, n))


class LPTForwardModel:
    """White noise to the z = 0 (``a``) LPT density on the same ``n^3`` grid, in ``keras.ops``.

    Reproduces :func:`tfhalo.sim.ics.gaussian_field`,
    :func:`~tfhalo.sim.ics.lpt_displacements`, :func:`~tfhalo.sim.ics.lpt_state`
    and :func:`tfhalo.sim.mesh.cic_paint` for the same white noise
    (:func:`tfhalo.sim.ics.white_noise`), to rounding in float64. All
    ``k``-space arrays (the amplitude ``sqrt(P n^3 / V)``, ``i k / k^2`` and
    ``k_i k_j / k^2``) are tabulated once in float64 and stored in ``dtype``.

    This is the forward model of Charnock et al. (2020), arXiv:1909.06379
    (section 4), after BORG (Jasche & Wandelt 2013, arXiv:1203.3639); 2LPT as
    in Scoccimarro (1998), arXiv:astro-ph/9711187.

    Args:
        n_grid: lattice sites and grid cells per side (>= 2).
        box_size: box side, Mpc/h.
        cosmology: a :class:`~tfhalo.sim.cosmology.Cosmology` (default WMAP5).
        order: 1 (Zel'dovich) or 2 (2LPT).
        a: scale factor of the positions and density, in ``(0, 1.5]``; the
            linear field is always the one at ``a = 1``.
        dtype: ``"float32"`` or ``"float64"`` (on JAX, float64 needs ``jax_enable_x64``).
        particle_factor: LPT particles per grid cell per side, ``f``: the displacements are
            computed on an ``(f n)^3`` particle lattice from the linear field's modes
            ``|k_i| < n/2`` (the inference grid's Nyquist planes are left out for ``f > 1``;
            ``n`` must then be even) and the ``(f n)^3`` particles are painted on the
            ``n^3`` grid. With ``f = 1`` a voxel receives one particle on average, so that
            ``log(1 + delta)`` of nearly empty voxels makes the likelihood very stiff; ``f = 2``
            (8 particles per voxel) smooths it at 8 times the particles.

    Raises:
        ValueError: an argument is out of range (the message names it).

    Example:
        >>> from tfhalo.sim.ics import white_noise
        >>> model = LPTForwardModel(8, 32.0, order=2)
        >>> omega = np.stack([white_noise(8, s) for s in (1, 2)])   # (2, 8, 8, 8)
        >>> delta = model.linear_field(omega)                      # (2, 8, 8, 8)
        >>> psi1, psi2 = model.displacements(delta)               # (2, 8, 8, 8, 3) each
        >>> x = model.positions(omega)                             # (2, 512, 3) in [0, 32)
        >>> rho = model.density(omega)                             # (2, 8, 8, 8), mean 1
    """

    def __init__(
        self,
        n_grid: int,
        box_size: float,
        cosmology: Cosmology = WMAP5,
        order: int = 2,
        a: float = 1.0,
        dtype: str = "float64",
        particle_factor: int = 1,
    ):
        self.n_grid = n = check_int("n_grid", n_grid, minimum=2)
        self.particle_factor = check_int("particle_factor", particle_factor, minimum=1)
        if self.particle_factor > 1 and n % 2:
            raise ValueError(f"n_grid must be even when particle_factor > 1. Received: n_grid={n_grid}")
        # the particle lattice: m^3 particles painted on the n^3 grid
        self.n_particles_side = m = n * self.particle_factor
        self.box_size = box_size = check_float("box_size", box_size, positive=True)
        self.cosmology = _check_cosmology(cosmology)
        self.order = check_int("order", order)
        check_choice("order", self.order, ORDERS)
        self.a = check_float("a", a)
        if not 0.0 < self.a <= 1.5:
            raise ValueError(f"a must be in (0, 1.5]. Received: a={a!r}")
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            raise ValueError(f"dtype must be one of {DTYPES}. Received: dtype={dtype!r}") from None
        self.dtype = check_choice("dtype", dtype, DTYPES)
        probe = ops.convert_to_tensor(np.zeros(1), dtype=self.dtype)
        if keras.backend.standardize_dtype(probe.dtype) != self.dtype:
            raise ValueError(
                f"dtype={self.dtype!r} is not available on the {keras.backend.backend()} backend "
                "(on JAX, float64 needs jax_enable_x64). Received: dtype='float64'"
            )

        self.growth_1 = float(cosmology.growth_factor(self.a))
        self.growth_2 = float(cosmology.growth_factor_2(self.a)) if self.order == 2 else 0.0

        kvec = rfft_wavenumbers(m, box_size)
        kodd = derivative_wavenumbers(m, box_size)
        k2 = kvec[0] ** 2 + kvec[1] ** 2 + kvec[2] ** 2
        k2[0, 0, 0] = 1.0
        inv_k2 = 1.0 / k2
        inv_k2[0, 0, 0] = 0.0  # the mean mode has no potential
        half = k2.shape
        # psi1 = irfftn(i k_d / k^2 delta_k) with the odd-derivative Nyquist planes zeroed
        gradient = np.stack([np.broadcast_to(kodd[d] * inv_k2, half) for d in range(3)])
        # phi1_ij = irfftn(k_i k_j / k^2 delta_k): full k on the diagonal, Nyquist-zeroed off it
        # (the second-derivative convention of lpt_displacements)
        pairs = ((0, 1), (0, 2), (1, 2))
        hessian = np.stack(
            [np.broadcast_to(kvec[d] ** 2 * inv_k2, half) for d in range(3)]
            + [np.broadcast_to(kodd[i] * kodd[j] * inv_k2, half) for i, j in pairs]
        )

        def const(x):
            return ops.convert_to_tensor(np.ascontiguousarray(x, dtype=np.float64), dtype=self.dtype)

        self._amplitude = const(linear_amplitude(n, box_size, cosmology))
        self._gradient = const(gradient)
        self._hessian = const(hessian)
        self._lattice = const(lattice_positions(m, box_size))

    # ---------------------------------------------------------------- helpers
    def _cast(self, x):
        x = ops.convert_to_tensor(x)
        if keras.backend.standardize_dtype(x.dtype) != self.dtype:
            x = ops.cast(x, self.dtype)
        return x

    def _check_field(self, name, x):
        shape = tuple(x.shape)
        n = self.n_grid
        if len(shape) != 4 or shape[1:] != (n, n, n):
            raise ValueError(f"{name} must have shape (B, {n}, {n}, {n}). Received: {name}.shape={shape}")

    def _vector_field(self, real, imag, sign):
        """``irfftn(sign i g_d field_k)`` for the three ``g_d`` of ``i k_d / k^2``: ``(B, n, n, n, 3)``."""
        g = self._gradient[None]  # (1, 3, n, n, m)
        re, im = real[:, None], imag[:, None]
        # i g (re + i im) = -g im + i g re
        out = irfft3(-sign * g * im, sign * g * re, self.n_particles_side)  # (B, 3, m, m, m)
        return ops.transpose(out, (0, 2, 3, 4, 1))

    # ------------------------------------------------------------------ model
    def linear_field(self, omega):
        """Linear density contrast at ``a = 1`` of white noise ``omega``.

        Args:
            omega: ``(B, n, n, n)`` white noise (cast to the model dtype).

        Returns:
            ``(B, n, n, n)`` ``delta_L = irfftn(rfftn(omega) sqrt(P n^3 / V))``.
        """
        omega = self._cast(omega)
        self._check_field("omega", omega)
        re, im = rfft3(omega)
        return irfft3(re * self._amplitude, im * self._amplitude, self.n_grid)

    def displacements(self, delta_lin):
        """First- and second-order Lagrangian displacements of a linear field (at ``a = 1``).

        Args:
            delta_lin: ``(B, n, n, n)`` linear density contrast.

        Returns:
            ``(psi1, psi2)``, each ``(B, m, m, m, 3)`` Mpc/h on the ``m = particle_factor n``
            lattice, such that ``x = q + D1 psi1 + D2 psi2``; ``psi2`` is zero when ``order == 1``.
        """
        re, im, s_re, s_im = self._displacement_spectra(delta_lin)
        psi1 = self._vector_field(re, im, 1.0)
        if s_re is None:
            return psi1, ops.zeros_like(psi1)
        # lap phi2 = source, psi2 = +grad phi2 = irfftn(-i k / k^2 source_k)
        return psi1, self._vector_field(s_re, s_im, -1.0)

    def _displacement_spectra(self, delta_lin):
        """Half spectra on the particle lattice of ``delta_L`` and of the 2LPT source.

        Returns ``(re, im, s_re, s_im)``, each ``(B, m, m, m // 2 + 1)``, with
        ``psi1 = irfftn(i k / k^2 delta_k)`` and ``psi2 = irfftn(-i k / k^2 source_k)``;
        ``s_re`` and ``s_im`` are ``None`` when ``order == 1``.
        """
        delta = self._cast(delta_lin)
        self._check_field("delta_lin", delta)
        n = self.n_particles_side
        re, im = rfft3(delta)
        if self.particle_factor > 1:
            re, im = self._pad_spectrum(re), self._pad_spectrum(im)
        if self.order == 1:
            return re, im, None, None
        h = self._hessian[None]
        d = irfft3(h * re[:, None], h * im[:, None], n)  # (B, 6, n, n, n): xx yy zz xy xz yz
        source = (
            d[:, 0] * d[:, 1] + d[:, 0] * d[:, 2] + d[:, 1] * d[:, 2]
            - d[:, 3] ** 2 - d[:, 4] ** 2 - d[:, 5] ** 2
        )
        s_re, s_im = rfft3(source)
        return re, im, s_re, s_im

    def _pad_spectrum(self, x):
        """``(B, n, n, n//2+1)`` half spectrum -> ``(B, m, m, m//2+1)``: the modes ``|k_i| < n/2`` of the
        inference grid, zeros elsewhere, times ``(m / n)^3`` (the same field sampled on the finer lattice)."""
        n, m = self.n_grid, self.n_particles_side
        h = n // 2
        x = x * float(self.particle_factor) ** 3
        batch = ops.shape(x)[0]

        def pad_axis(t, axis):
            shape = list(ops.shape(t))
            shape[axis] = m - n + 1
            zeros = ops.zeros(shape, dtype=t.dtype)
            lo = ops.take(t, np.arange(h), axis=axis)
            hi = ops.take(t, np.arange(h + 1, n), axis=axis)
            return ops.concatenate([lo, zeros, hi], axis=axis)

        x = pad_axis(pad_axis(x, 1), 2)
        x = ops.take(x, np.arange(h), axis=3)
        zeros = ops.zeros((batch, m, m, m // 2 + 1 - h), dtype=x.dtype)
        return ops.concatenate([x, zeros], axis=3)

    def _positions_from_delta(self, delta):
        # D1 psi1 + D2 psi2 is linear in the two spectra, so it takes one inverse transform of
        # D1 delta_k - D2 source_k (psi2 carries the opposite sign) instead of one per order.
        re, im, s_re, s_im = self._displacement_spectra(delta)
        re, im = self.growth_1 * re, self.growth_1 * im
        if s_re is not None:
            re, im = re - self.growth_2 * s_re, im - self.growth_2 * s_im
        psi = self._vector_field(re, im, 1.0)
        x = self._lattice[None] + ops.reshape(psi, (-1, self.n_particles_side**3, 3))
        return _wrap(x, self.box_size)

    def _density_from_positions(self, positions):
        mesh = cic_paint(positions, self.n_grid, self.box_size)
        # sum / n^3, not ops.mean: Keras' JAX mean accumulates float64 in float32
        return mesh * (self.n_grid**3 / ops.sum(mesh, axis=(1, 2, 3), keepdims=True))

    def positions(self, omega):
        """LPT particle positions at ``a``, lattice (C) order, wrapped into ``[0, L)``.

        Args:
            omega: ``(B, n, n, n)`` white noise.

        Returns:
            ``(B, m^3, 3)`` positions, Mpc/h (``m = particle_factor n``); row ``(i m + j) m + k`` is the
            particle from site ``(i, j, k)``.
        """
        return self._positions_from_delta(self.linear_field(omega))

    def density(self, omega):
        """``1 + delta`` of the LPT particles, CIC on the ``n^3`` grid, divided by its mean.

        Args:
            omega: ``(B, n, n, n)`` white noise.

        Returns:
            ``(B, n, n, n)`` density with mean 1 per batch element.
        """
        return self._density_from_positions(self.positions(omega))

    def __call__(self, omega):
        """The whole chain at once.

        Args:
            omega: ``(B, n, n, n)`` white noise.

        Returns:
            ``dict(delta_lin=(B, n, n, n), positions=(B, n^3, 3), density=(B, n, n, n))``.
        """
        delta = self.linear_field(omega)
        positions = self._positions_from_delta(delta)
        return {"delta_lin": delta, "positions": positions, "density": self._density_from_positions(positions)}

    # ---------------------------------------------------------- serialisation
    def get_config(self) -> dict:
        """JSON-friendly constructor arguments (the cosmology as a dict)."""
        return {
            "n_grid": self.n_grid,
            "box_size": self.box_size,
            "cosmology": self.cosmology.to_dict(),
            "order": self.order,
            "a": self.a,
            "dtype": self.dtype,
            "particle_factor": self.particle_factor,
        }

    @classmethod
    def from_config(cls, config: dict) -> "LPTForwardModel":
        """Inverse of :meth:`get_config`."""
        config = dict(config)
        cosmology = config.pop("cosmology", None)
        if cosmology is not None and not isinstance(cosmology, Cosmology):
            cosmology = Cosmology.from_dict(cosmology)
        return cls(**config, **({} if cosmology is None else {"cosmology": cosmology}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "cosmology")
        return f"LPTForwardModel({args})"


def truncate_white_noise(omega_hi, n_grid: int) -> np.ndarray:
    """White noise of an ``N^3`` lattice Fourier-truncated to an ``n^3`` grid.

    Keeps the modes with ``|k_i| < n / 2`` (in units of the fundamental mode)
    on every axis and zeroes the coarse Nyquist planes, with
    ``F_n(omega_n) = F_N(omega_N)[kept] (n / N)^(3/2)``. The kept modes of the
    result are unit-variance white noise (``<|F_n|^2> = n^3``), and for any
    :func:`linear_amplitude` the linear field of ``omega_n`` equals the hi-res
    linear field, Fourier-truncated to the same modes, sampled at the coarse
    grid points ``(i, j, k) L / n`` (up to the tabulation of ``P(k)``). This
    is the truth of a field-level inference whose data come from a higher
    resolution simulation. For even ``n`` the Nyquist planes are exactly 0,
    so the per-voxel variance is ``(1 - 1/n)^3``, not 1.

    Args:
        omega_hi: ``(N, N, N)`` finite white noise (e.g. ``white_noise(N, seed)``).
        n_grid: coarse cells per side, ``2 <= n <= N`` with ``N % n == 0``.

    Returns:
        ``(n, n, n)`` float64 white noise.

    Raises:
        ValueError: ``omega_hi`` is not a finite cubic array, or ``n_grid`` does
            not divide its side.

    Example:
        >>> from tfhalo.sim.ics import white_noise
        >>> omega = truncate_white_noise(white_noise(32, seed=0), 8)   # (8, 8, 8)
    """
    omega_hi = check_finite_array("omega_hi", np.asarray(omega_hi, dtype=np.float64))
    if omega_hi.ndim != 3 or len(set(omega_hi.shape)) != 1 or omega_hi.shape[0] < 2:
        raise ValueError(f"omega_hi must be a cubic (N, N, N) array. Received: omega_hi.shape={omega_hi.shape}")
    big = omega_hi.shape[0]
    n = check_int("n_grid", n_grid, minimum=2, maximum=big)
    if big % n:
        raise ValueError(f"n_grid must divide the side of omega_hi ({big}). Received: n_grid={n}")
    freq = np.round(np.fft.fftfreq(n, d=1.0 / n)).astype(np.int64)  # signed integer frequencies
    keep = np.abs(freq) < n / 2
    rows = np.mod(freq, big)  # where each coarse frequency sits on the fine grid
    half = n // 2 + 1
    spec = scipy.fft.rfftn(omega_hi)[np.ix_(rows, rows, np.arange(half))]
    spec *= (n / big) ** 1.5
    spec[~keep] = 0.0
    spec[:, ~keep] = 0.0
    spec[:, :, ~keep[:half]] = 0.0
    return scipy.fft.irfftn(spec, s=(n, n, n))
