"""Custom Keras layers of tfhalo, written with ``keras.ops`` only (any backend).

* :class:`MultipoleConv3D`: convolution with kernels = radial profile x real Y_lm.
* :class:`MixtureDensityHead`: Gaussian-mixture halo mass function n(M | psi).
* :class:`CauchyScale`: holds the trainable Cauchy scale gamma of the deep-halo loss.
"""

from tfhalo.layers.cauchy import CauchyScale
from tfhalo.layers.mixture_density import MixtureDensityHead
from tfhalo.layers.multipole import MultipoleConv3D, multipole_basis, real_spherical_harmonic

__all__ = [
    "CauchyScale",
    "MixtureDensityHead",
    "MultipoleConv3D",
    "multipole_basis",
    "real_spherical_harmonic",
]
