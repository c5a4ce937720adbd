"""tfhalo: learning how dark-matter halos form from cosmological simulations."""

__version__ = "0.1.0"
