"""The neural bias model: a multipole neural physical engine plus a mixture density head.

Charnock et al. (2020): one ``l = 0`` multipole kernel (3^3, 4 radial weights
+ 1 bias, softplus) turns ``log(1 + delta)`` into a summary ``psi`` per voxel;
a 2-Gaussian mixture density network (12 weights) maps ``psi`` to the halo
mass distribution function ``n(M | psi)``.  5 + 12 = 17 parameters.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfhalo import layers as _layers


@keras.saving.register_keras_serializable(package="tfhalo")
class NeuralBiasModel(keras.Model):
    """``log(1 + delta)`` grid -> per-voxel mixture parameters of ``n(M | psi)``.

    Args:
        log_mass_threshold: ``ln M_th`` (M in Msun/h): the lower edge of the
            mass function and the origin of the first mixture mean.
        n_kernels: multipole kernels (filters) per ``l``.
        ells: multipoles of the NPE kernels, ``(0,)`` or ``(0, 1)``.
        kernel_size: side of the cubic kernel (odd).
        n_components: Gaussians in the mixture.
        activation: NPE activation (the paper: softplus).
        padding: convolution padding; ``"periodic"`` for periodic boxes.
        mean_increment: map from ``c_j+1 psi + d_j+1`` to ``mu_j+1 - mu_j``.
            Default ``"softplus"``, not the paper's ``"relu"``: relu has a
            zero-gradient region (once a chain enters it the likelihood is flat
            in ``c_2, d_2`` and HMC cannot come back) and a kink (leapfrog
            energy errors, divergences), which kept the paper's 4 chains from
            mixing.  softplus keeps the means ordered and the posterior smooth.
        **kwargs: passed to :class:`keras.Model`.

    Call:
        ``log_density``: ``(B, n, n, n)`` or ``(B, n, n, n, 1)``.
        Returns ``(B, n, n, n, 3 * n_components)`` = ``[alpha, mu, sigma]``.

    Example:
        >>> model = NeuralBiasModel(log_mass_threshold=math.log(1e12))
        >>> model.build((None, 8, 8, 8, 1))
        >>> model.count_params()
        17
    """

    def __init__(
        self,
        log_mass_threshold: float,
        n_kernels: int = 1,
        ells=(0,),
        kernel_size: int = 3,
        n_components: int = 2,
        activation: str = "softplus",
        padding: str = "periodic",
        mean_increment: str = "softplus",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not math.isfinite(float(log_mass_threshold)):
            raise ValueError(
                f"log_mass_threshold must be finite. Received: log_mass_threshold={log_mass_threshold}"
            )
        if int(n_kernels) < 1:
            raise ValueError(f"n_kernels must be a positive integer. Received: n_kernels={n_kernels}")
        ells = tuple(int(l) for l in ells)
        if ells not in ((0,), (0, 1)):
            raise ValueError(f"ells must be (0,) or (0, 1). Received: ells={ells}")
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer. Received: kernel_size={kernel_size}")
        if int(n_components) < 1:
            raise ValueError(f"n_components must be a positive integer. Received: n_components={n_components}")
        self.log_mass_threshold = float(log_mass_threshold)
        self.n_kernels = int(n_kernels)
        self.ells = ells
        self.kernel_size = int(kernel_size)
        self.n_components = int(n_components)
        self.activation = activation
        self.padding = padding
        self.mean_increment = mean_increment
        self.npe = _layers.MultipoleConv3D(
            self.n_kernels, ells=self.ells, kernel_size=self.kernel_size, padding=padding,
            activation=activation, dtype=kwargs.get("dtype"), name="npe",
        )
        self.head = _layers.MixtureDensityHead(
            n_components=self.n_components, log_mass_threshold=self.log_mass_threshold,
            mean_increment=mean_increment, dtype=kwargs.get("dtype"), name="mdn",
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) == 4:
            input_shape = input_shape + (1,)
        self.npe.build(input_shape)
        self.head.build(self.npe.compute_output_shape(input_shape))
        self.built = True

    @staticmethod
    def _with_channel(log_density):
        log_density = ops.convert_to_tensor(log_density)
        if len(log_density.shape) == 4:
            log_density = ops.expand_dims(log_density, -1)
        return log_density

    def summaries(self, log_density):
        """NPE output ``psi``: ``(B, n, n, n, n_features)``."""
        return self.npe(self._with_channel(log_density))

    def call(self, log_density):
        return voxelwise(self.head, self.npe(self._with_channel(log_density)))

    def get_config(self):
        config = super().get_config()
        config.update(
            log_mass_threshold=self.log_mass_threshold,
            n_kernels=self.n_kernels,
            ells=list(self.ells),
            kernel_size=self.kernel_size,
            n_components=self.n_components,
            activation=self.activation,
            padding=self.padding,
            mean_increment=self.mean_increment,
        )
        return config


def voxelwise(head_call, psi):
    """``head_call`` on ``psi (B, X, Y, Z, F)`` as a ``(B X Y Z, F)`` matrix, reshaped back.

    The head acts voxel by voxel, so this changes no value. It is the faster
    layout: XLA's CPU code for the head and its gradient on the 5-D grid is
    about 3 times slower than on the matrix (``benchmarks/bench_bias.py``).
    Grids with an unknown spatial size are passed through as they are.

    Args:
        head_call: ``(V, F) -> (V, 3K)``, e.g. a :class:`MixtureDensityHead` or
            a closure around its ``stateless_call``.
        psi: ``(B, X, Y, Z, F)`` NPE output.

    Returns:
        ``(B, X, Y, Z, 3K)``.
    """
    spatial = tuple(psi.shape[1:-1])
    if any(s is None for s in spatial) or psi.shape[-1] is None:
        return head_call(psi)
    params = head_call(ops.reshape(psi, (-1, psi.shape[-1])))
    return ops.reshape(params, (-1,) + spatial + (params.shape[-1],))


def build_model(log_mass_threshold: float, n_grid: int = 8, **kwargs) -> NeuralBiasModel:
    """A :class:`NeuralBiasModel` built for ``(None, n_grid, n_grid, n_grid, 1)`` inputs.

    Weights are the layers' defaults; :func:`tfhalo.bias.fit.fit_map` sets its
    own seeded starting point, so no global seed is touched here.
    """
    model = NeuralBiasModel(log_mass_threshold, **kwargs)
    model.build((None, n_grid, n_grid, n_grid, 1))
    return model
