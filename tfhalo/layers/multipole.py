"""Multipole 3D convolution: kernels = learned radial profile x real Y_lm.

The kernel of a :class:`MultipoleConv3D` for the harmonic ``(l, m)`` is

    K_lm(o) = w_l(|o|) * sqrt(4 pi) * Y_lm(o / |o|)

on the integer offsets ``o`` of a ``k x k x k`` grid, with one learned weight
per distance shell ``|o|`` and per input/output channel pair. ``sqrt(4 pi)``
makes the l = 0 kernel equal to the radial weights themselves (the
"centre, face, edge, corner" l = 0 kernel of Charnock et al. 2020) and makes
``sum_m Y^2`` average to one per voxel, so the assembled kernel has the scale
of an ordinary kernel.

The basis is a constant built once with NumPy (float64); each call assembles
the dense ``(k, k, k, C_in, C_out)`` kernel with one einsum per l and runs a
single ``keras.ops.conv``, so the cost is that of a ``Conv3D`` of the same shape.

Reference (multipole kernels, section 3.1):
    Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural
    physical engines for inferring the halo mass distribution function", MNRAS
    494, 50, arXiv:1909.06379.
"""

import math

import keras
import numpy as np
from keras import ops

_PADDINGS = ("same", "valid", "periodic")
# Values of |Y| below this on a whole shell are rounding noise of a zero.
_ZERO_TOL = 1e-10


def _check_degree(l, m=None):
    if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or l < 0:
        raise ValueError(f"l must be a non-negative integer. Received: l={l!r}")
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or abs(m) > l:
            raise ValueError(
                f"m must be an integer with |m| <= l. Received: l={l!r}, m={m!r}"
            )


def real_spherical_harmonic(l, m, x, y, z):
    """Orthonormal real spherical harmonic Y_lm of the direction of (x, y, z).

    Real harmonics without the Condon-Shortley phase, evaluated directly in
    Cartesian form (no angles, so no atan2 or pole ambiguity):
    ``Y_l0 = N_l0 P_l(u_z)``, and for ``m != 0``
    ``Y_lm = sqrt(2) N_l|m| P_l^(|m|)(u_z) * Re/Im[(u_x + i u_y)^|m|]``
    (Re for ``m > 0``, Im for ``m < 0``), where ``P_l^(|m|)`` is the |m|-th
    derivative of the Legendre polynomial and
    ``N_lm = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!)``. Thus l = 1, m = -1, 0, 1 is
    ``sqrt(3/(4 pi)) * (y, z, x) / r``. At the origin the direction is
    undefined: the function returns ``1/sqrt(4 pi)`` for l = 0 and 0 otherwise.

    Args:
        l: degree, integer >= 0.
        m: order, integer with ``|m| <= l``.
        x, y, z: array-likes broadcastable to a common shape; need not be
            unit vectors.

    Returns:
        float64 array of the broadcast shape.

    Example:
        >>> real_spherical_harmonic(1, 1, 1.0, 0.0, 0.0)  # sqrt(3 / (4 pi))
        array(0.48860251)
    """
    _check_degree(l, m)
    x, y, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, y, z)))
    r = np.sqrt(x * x + y * y + z * z)
    nonzero = r > 0
    r_safe = np.where(nonzero, r, 1.0)
    ux, uy, uz = x / r_safe, y / r_safe, z / r_safe
    am = abs(m)
    legendre_derivative = np.polynomial.legendre.Legendre.basis(l).deriv(am)(uz)
    norm = math.sqrt(
        (2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am)
    )
    if m == 0:
        value = norm * legendre_derivative
    else:
        azimuthal = (ux + 1j * uy) ** am
        part = azimuthal.real if m > 0 else azimuthal.imag
        value = math.sqrt(2.0) * norm * legendre_derivative * part
    origin_value = 1.0 / math.sqrt(4 * math.pi) if l == 0 else 0.0
    return np.where(nonzero, value, origin_value)


def _check_kernel_size(kernel_size):
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, (int, np.integer))
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(
            "kernel_size must be a positive odd integer. "
            f"Received: kernel_size={kernel_size!r}"
        )


def _normalize_ells(ells):
    if isinstance(ells, (int, np.integer)) and not isinstance(ells, bool):
        ells = (ells,)
    try:
        ells = tuple(ells)
    except TypeError:
        raise ValueError(
            f"ells must be an integer or a sequence of integers. Received: ells={ells!r}"
        ) from None
    if not ells:
        raise ValueError(f"ells must not be empty. Received: ells={ells!r}")
    for l in ells:
        if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or l < 0:
            raise ValueError(
                f"ells must contain non-negative integers. Received: ells={ells!r}"
            )
    if len(set(ells)) != len(ells):
        raise ValueError(f"ells must not contain duplicates. Received: ells={ells!r}")
    return tuple(int(l) for l in ells)


def _single_l_basis(kernel_size, l, equivariant):
    """Basis rows of one degree: array (n_weights_l, k, k, k, 2l+1)."""
    half = kernel_size // 2
    offsets = np.arange(kernel_size) - half
    # Kernel axis 0, 1, 2 <-> x, y, z (the input's spatial axes 1, 2, 3).
    gx, gy, gz = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    dist2 = gx**2 + gy**2 + gz**2
    harmonics = np.stack(
        [
            math.sqrt(4 * math.pi) * real_spherical_harmonic(l, m, gx, gy, gz)
            for m in range(-l, l + 1)
        ],
        axis=-1,
    )
    harmonics[np.abs(harmonics) < _ZERO_TOL] = 0.0
    shells = [s for s in np.unique(dist2) if l == 0 or s > 0]
    rows = []
    if equivariant:
        for s in shells:
            pattern = np.where((dist2 == s)[..., None], harmonics, 0.0)
            if np.any(pattern != 0):
                rows.append(pattern)
    else:
        for mi in range(2 * l + 1):
            for s in shells:
                pattern = np.zeros_like(harmonics)
                pattern[..., mi] = np.where(dist2 == s, harmonics[..., mi], 0.0)
                if np.any(pattern != 0):
                    rows.append(pattern)
    return np.stack(rows, axis=0)


def multipole_basis(kernel_size, ells=(0,), equivariant=False):
    """Constant basis mapping radial weights to multipole kernels.

    Row ``r`` of the basis is the kernel pattern multiplied by radial weight
    ``r``: ``kernel[x, y, z, h] = sum_r w[r] * basis[r, x, y, z, h]`` for one
    input/output channel pair, where ``h`` runs over the harmonics ordered l
    (in the order of ``ells``) then m = -l..l. Kernel axes 0, 1, 2 are the
    offsets along x, y, z (centre at ``kernel_size // 2``). Rows are ordered
    by l, then (non-equivariant mode) m, then shell radius. Shells are the
    distinct distances from the centre; the centre is dropped for l > 0 and
    shells on which the harmonic(s) vanish everywhere get no row. In
    equivariant mode one row per shell and l carries all m of that l.

    Weights per input/output channel pair (this function's first axis):

    ====  ==========  ============  =============
    k     l           equivariant   not equivar.
    ====  ==========  ============  =============
    3     0           4             4
    3     1           3             9  (3 per m)
    3     2           3             10 (2 per m)
    5     0           10            10
    5     1           9             27 (9 per m)
    5     2           9             35
    ====  ==========  ============  =============

    Args:
        kernel_size: odd integer k >= 1.
        ells: integer or sequence of distinct integers l >= 0.
        equivariant: share radial weights across m within each l.

    Returns:
        float64 array of shape ``(n_weights, k, k, k, sum(2l+1))``; the values
        are ``sqrt(4 pi) * Y_lm`` of the offset direction on the row's shell.

    Example:
        >>> multipole_basis(3, ells=(0, 1), equivariant=True).shape
        (7, 3, 3, 3, 4)
    """
    _check_kernel_size(kernel_size)
    ells = _normalize_ells(ells)
    blocks = [_single_l_basis(kernel_size, l, equivariant) for l in ells]
    n_harm = sum(2 * l + 1 for l in ells)
    out = np.zeros((sum(b.shape[0] for b in blocks),) + (kernel_size,) * 3 + (n_harm,))
    row = col = 0
    for block in blocks:
        out[row : row + block.shape[0], ..., col : col + block.shape[-1]] = block
        row += block.shape[0]
        col += block.shape[-1]
    return out


def _normalize_filters(filters, ells):
    if isinstance(filters, (int, np.integer)) and not isinstance(filters, bool):
        per_l = (int(filters),) * len(ells)
    else:
        try:
            per_l = tuple(filters)
        except TypeError:
            raise ValueError(
                f"filters must be a positive integer or one per l. Received: filters={filters!r}"
            ) from None
        if len(per_l) != len(ells):
            raise ValueError(
                f"filters must have one entry per l ({len(ells)} for ells={ells}). "
                f"Received: filters={filters!r}"
            )
    for f in per_l:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f <= 0:
            raise ValueError(
                f"filters must be positive integers. Received: filters={filters!r}"
            )
    return tuple(int(f) for f in per_l)


def _normalize_strides(received):
    strides = received
    if isinstance(strides, (int, np.integer)) and not isinstance(strides, bool):
        strides = (strides,) * 3
    try:
        strides = tuple(strides)
    except TypeError:
        strides = ()
    if len(strides) != 3 or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0 for s in strides
    ):
        raise ValueError(
            f"strides must be a positive integer or 3 positive integers. Received: strides={received!r}"
        )
    return tuple(int(s) for s in strides)


@keras.saving.register_keras_serializable(package="tfhalo")
class MultipoleConv3D(keras.layers.Layer):
    """3D convolution whose kernels are radial profiles times real harmonics.

    For every ``l`` in ``ells`` and ``m = -l..l`` the kernel is
    ``w(|o|) * sqrt(4 pi) Y_lm(o/|o|)`` (see :func:`multipole_basis`), with one
    radial weight per distance shell per input/output channel pair. Input is
    channels-last ``(batch, X, Y, Z, C_in)``; output channels are ordered
    l (in the order of ``ells``), then m from -l to l, then filter, i.e.
    channel ``offset_l + (m + l) * filters_l + f``.

    With ``equivariant=True`` the radial weights are shared across m, so each
    l block of the output transforms like Y_l under the 48 symmetries of the
    cube (l = 0: invariant; l = 1: a vector in (y, z, x) order). To keep that
    exact, the bias is then only added to l = 0 channels. With
    ``equivariant=False`` every m has its own radial weights (the counting of
    Charnock et al. 2020, arXiv:1909.06379). Weights per channel pair
    (k = 3 / k = 5): l = 0: 4 / 10; l = 1: 3 / 9 equivariant, 9 / 27 not;
    l = 2: 3 / 9 equivariant, 10 / 35 not.

    Padding ``"periodic"`` wraps the input (``k // 2`` voxels each side) then
    runs a valid convolution: output voxel i is centred on input voxel
    ``i * stride``, and the output has ``ceil(n / stride)`` voxels per axis.

    Initialisation: the radial weights are the first entries of a sample of
    ``kernel_initializer`` drawn with the shape of the equivalent dense
    kernel ``(k, k, k, C_in, C_out)``, so e.g. glorot_uniform sees the fans
    of the Conv3D of the same shape; since ``sum_m (sqrt(4 pi) Y_lm)^2 / (2l+1)
    = 1`` the assembled kernel then has that Conv3D's variance per voxel.
    ``kernel_regularizer`` applies to the radial weights.

    Args:
        filters: positive int (same for every l) or one positive int per l.
        ells: int or sequence of distinct ints l >= 0.
        kernel_size: positive odd int (cubic kernel).
        strides: positive int or 3 positive ints.
        padding: ``"same"``, ``"valid"`` or ``"periodic"``.
        equivariant: share radial weights across m (rotation equivariance).
        use_bias: add a bias per output channel (l = 0 only if equivariant).
        activation: Keras activation applied to the output.
        kernel_initializer, bias_initializer: Keras initializers.
        kernel_regularizer, bias_regularizer: Keras regularizers.
        **kwargs: base ``Layer`` arguments (name, dtype, ...).

    Input shape: ``(batch, X, Y, Z, C_in)``.
    Output shape: ``(batch, X', Y', Z', sum_l (2l+1) * filters_l)``.

    Example:
        >>> layer = MultipoleConv3D(8, ells=(0, 1), padding="periodic")
        >>> tuple(layer(np.zeros((2, 16, 16, 16, 1), "float32")).shape)
        (2, 16, 16, 16, 32)
    """

    def __init__(
        self,
        filters,
        ells=(0,),
        kernel_size=3,
        strides=1,
        padding="same",
        equivariant=False,
        use_bias=True,
        activation=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.ells = _normalize_ells(ells)
        self.filters = filters
        self._filters_per_l = _normalize_filters(filters, self.ells)
        _check_kernel_size(kernel_size)
        self.kernel_size = int(kernel_size)
        self.strides = _normalize_strides(strides)
        if not isinstance(padding, str) or padding.lower() not in _PADDINGS:
            raise ValueError(
                f"padding must be one of {_PADDINGS}. Received: padding={padding!r}"
            )
        self.padding = padding.lower()
        self.equivariant = bool(equivariant)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=5)
        self._bases = [
            _single_l_basis(self.kernel_size, l, self.equivariant) for l in self.ells
        ]
        self._full_basis = multipole_basis(self.kernel_size, self.ells, self.equivariant)

    @property
    def output_channels(self):
        """Total number of output channels, ``sum_l (2l+1) * filters_l``."""
        return sum((2 * l + 1) * f for l, f in zip(self.ells, self._filters_per_l))

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(
                "The channel dimension of the input must be known. "
                f"Received: input_shape={input_shape}"
            )
        k = self.kernel_size
        dense_shape = (k, k, k, in_channels, self.output_channels)
        self.radial_weights = []
        channel_offset = 0
        for l, f, basis in zip(self.ells, self._filters_per_l, self._bases):
            n_weights = basis.shape[0]
            self.radial_weights.append(
                self.add_weight(
                    name=f"radial_l{l}",
                    shape=(n_weights, in_channels, f),
                    initializer=self._radial_initializer(dense_shape, n_weights, f, channel_offset),
                    regularizer=self.kernel_regularizer,
                )
            )
            channel_offset += (2 * l + 1) * f
        if self.use_bias:
            n_bias = self.output_channels
            if self.equivariant:
                n_bias = sum(f for l, f in zip(self.ells, self._filters_per_l) if l == 0)
            self.bias = (
                self.add_weight(
                    name="bias",
                    shape=(n_bias,),
                    initializer=self.bias_initializer,
                    regularizer=self.bias_regularizer,
                )
                if n_bias
                else None
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(ndim=5, axes={-1: in_channels})

    def _radial_initializer(self, dense_shape, n_weights, n_filters, channel_offset):
        initializer = self.kernel_initializer
        k = self.kernel_size

        def init(shape, dtype=None):
            # Draw with the dense kernel's shape so fan-based initialisers see the
            # fans of the equivalent Conv3D, then keep n_weights x C_in x f entries
            # from this l block's own output channels: a seeded initialiser returns
            # the same sample on every call, and disjoint slices keep the l blocks
            # from starting with identical weights.
            sample = initializer(dense_shape, dtype=dtype)
            sample = ops.reshape(sample, (k**3,) + tuple(dense_shape[3:]))
            return sample[:n_weights, :, channel_offset : channel_offset + n_filters]

        return init

    def assembled_kernel(self):
        """Dense kernel ``(k, k, k, C_in, C_out)`` as used by ``keras.ops.conv``."""
        k = self.kernel_size
        weights = list(self.radial_weights)
        if len(set(self._filters_per_l)) == 1:
            # One einsum over all l: stack the radial weights and use the
            # block-diagonal basis of every l at once.
            f = self._filters_per_l[0]
            stacked = weights[0] if len(weights) == 1 else ops.concatenate(weights, axis=0)
            basis = ops.convert_to_tensor(self._full_basis, dtype=stacked.dtype)
            kernel = ops.einsum("rxyzh,rif->xyzihf", basis, stacked)
            return ops.reshape(kernel, (k, k, k, -1, self._full_basis.shape[-1] * f))
        pieces = []
        for l, f, basis, w in zip(self.ells, self._filters_per_l, self._bases, weights):
            basis = ops.convert_to_tensor(basis, dtype=w.dtype)
            block = ops.einsum("rxyzm,rif->xyzimf", basis, w)
            pieces.append(ops.reshape(block, (k, k, k, -1, (2 * l + 1) * f)))
        return ops.concatenate(pieces, axis=-1)

    def _full_bias(self, bias):
        if not self.equivariant or bias is None:
            return bias
        pieces, start = [], 0
        for l, f in zip(self.ells, self._filters_per_l):
            if l == 0:
                pieces.append(bias[start : start + f])
                start += f
            else:
                pieces.append(ops.zeros(((2 * l + 1) * f,), dtype=bias.dtype))
        return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=0)

    def _wrap_pad(self, inputs):
        half = self.kernel_size // 2
        if half == 0:
            return inputs
        for axis in (1, 2, 3):
            size = inputs.shape[axis]
            if size is not None and size < half:
                raise ValueError(
                    f"periodic padding needs at least {half} voxels per axis. "
                    f"Received: input shape {tuple(inputs.shape)}"
                )
            lead = (slice(None),) * axis
            head = inputs[lead + (slice(0, half),)]
            tail = inputs[lead + (slice(-half, None),)]
            inputs = ops.concatenate([tail, inputs, head], axis=axis)
        return inputs

    def _padded(self, inputs):
        if self.padding == "periodic":
            return self._wrap_pad(inputs), "valid"
        return inputs, self.padding

    def _finish(self, outputs, bias):
        bias = self._full_bias(bias)
        if bias is not None:
            outputs = outputs + bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def call(self, inputs):
        inputs, padding = self._padded(inputs)
        outputs = ops.conv(
            inputs, self.assembled_kernel(), strides=self.strides, padding=padding,
            data_format="channels_last",
        )
        return self._finish(outputs, self.bias)

    def basis_responses(self, inputs):
        """The input convolved with every basis kernel: the layer's output is linear in these.

        The convolution is linear in the radial weights,
        ``conv(x, sum_r w_r B_r) = sum_r w_r conv(x, B_r)``.  When one input is
        evaluated under many weight values (a sampler exploring the weights of
        a bias model on a fixed density field), computing these responses once
        turns every later evaluation into the small contraction of
        :meth:`call_on_responses`, with no convolution or its kernel gradient.

        Args:
            inputs: ``(batch, X, Y, Z, C_in)``.

        Returns:
            One tensor per ``l`` of ``ells``, shaped
            ``(batch, X', Y', Z', C_in, n_weights_l, 2l + 1)`` (the output's
            spatial shape; ``n_weights_l`` rows of that degree's basis).

        Example:
            >>> layer = MultipoleConv3D(2, ells=(0, 1), padding="periodic")
            >>> x = np.random.default_rng(0).normal(size=(1, 6, 6, 6, 1)).astype("float32")
            >>> y = layer.call_on_responses(layer.basis_responses(x))
            >>> bool(np.allclose(y, layer(x), atol=1e-5))
            True
        """
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if len(inputs.shape) != 5 or inputs.shape[-1] is None:
            raise ValueError(
                "inputs must have shape (batch, X, Y, Z, C_in) with a known C_in. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        inputs, padding = self._padded(inputs)
        c_in = int(inputs.shape[-1])
        # Each input channel is convolved on its own: move the channels into the batch.
        single = ops.reshape(ops.transpose(inputs, (0, 4, 1, 2, 3)), (-1,) + tuple(inputs.shape[1:4]) + (1,))
        k = self.kernel_size
        responses = []
        for basis in self._bases:
            rows, harmonics = basis.shape[0], basis.shape[-1]
            kernel = np.transpose(basis, (1, 2, 3, 0, 4)).reshape(k, k, k, 1, rows * harmonics)
            out = ops.conv(
                single, ops.convert_to_tensor(kernel, dtype=inputs.dtype), strides=self.strides,
                padding=padding, data_format="channels_last",
            )
            spatial = tuple(out.shape[1:4])
            out = ops.reshape(out, (-1, c_in) + spatial + (rows, harmonics))
            responses.append(ops.transpose(out, (0, 2, 3, 4, 1, 5, 6)))
        return responses

    def call_on_responses(self, responses, radial_weights=None, bias=None):
        """The layer's output from :meth:`basis_responses`, equal to ``self(inputs)`` up to rounding.

        Args:
            responses: the list returned by :meth:`basis_responses`.
            radial_weights: one tensor per ``l`` shaped like the layer's
                ``radial_weights`` (default: the layer's own), e.g. values of a
                stateless evaluation.
            bias: the bias vector (default: the layer's own; ignored without
                ``use_bias``).

        Returns:
            ``(batch, X', Y', Z', output_channels)``, as :meth:`call`.
        """
        if len(responses) != len(self.ells):
            raise ValueError(
                f"responses must hold one tensor per l of ells={self.ells}. Received: {len(responses)} tensors"
            )
        radial_weights = self.radial_weights if radial_weights is None else list(radial_weights)
        if len(radial_weights) != len(self.ells):
            raise ValueError(
                f"radial_weights must hold one tensor per l of ells={self.ells}. "
                f"Received: {len(radial_weights)} tensors"
            )
        pieces = []
        for response, weights in zip(responses, radial_weights):
            block = ops.einsum("bxyzirm,rif->bxyzmf", response, ops.cast(weights, response.dtype))
            pieces.append(ops.reshape(block, (-1,) + tuple(block.shape[1:4]) + (block.shape[4] * block.shape[5],)))
        outputs = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=-1)
        if not self.use_bias:
            bias = None
        elif bias is None:
            bias = self.bias
        return self._finish(outputs, None if bias is None else ops.cast(bias, outputs.dtype))

    def compute_output_shape(self, input_shape):
        spatial = []
        for size, stride in zip(input_shape[1:4], self.strides):
            if size is None:
                spatial.append(None)
            elif self.padding == "valid":
                spatial.append((size - self.kernel_size) // stride + 1)
            else:
                spatial.append(-(-size // stride))
        return (input_shape[0], *spatial, self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": list(self.filters)
                if not isinstance(self.filters, (int, np.integer))
                else int(self.filters),
                "ells": list(self.ells),
                "kernel_size": self.kernel_size,
                "strides": list(self.strides),
                "padding": self.padding,
                "equivariant": self.equivariant,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation)
                if self.activation is not None
                else None,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config
