"""Poisson likelihood of a halo catalogue under a neural bias model (paper eq. 16).

Halos are a Poisson point process in (position, mass) with intensity
``n(M | psi(x))`` per unit volume and unit mass, constant within a voxel.  Its
log-likelihood is

    ln L = sum_halos ln n(M_h | psi_{v(h)})  -  V * sum_voxels int_{M_th}^inf n(M | psi_v) dM,

with ``V`` the voxel volume.  The voxel sum enters ONCE (the authors' notebook
added it once per halo).  Every parameter has a Normal(0, 10^2) prior.

The Keras model is the single source of truth: the functions here take a flat
parameter vector, unpack it into the model's trainable variables and evaluate
the model with ``model.stateless_call`` (``keras.ops`` only, any backend).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from tfhalo.bias.fields import as_data_list
from tfhalo.bias.model import NeuralBiasModel, voxelwise
from tfhalo.layers import MultipoleConv3D

DEFAULT_PRIOR_SCALE = 10.0


class ParameterLayout:
    """Flat vector <-> list of a model's trainable variables (in ``model.trainable_variables`` order).

    Args:
        model: a built Keras model.

    Example:
        >>> layout = ParameterLayout(model)
        >>> theta = layout.get(model)        # (P,) float64
        >>> values = layout.unflatten(theta)  # list of tensors shaped like the variables
    """

    def __init__(self, model):
        if not model.built:
            raise ValueError(f"model must be built before its parameters can be laid out. Received: {model!r}")
        variables = list(model.trainable_variables)
        self.shapes = [tuple(int(s) for s in v.shape) for v in variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.paths = [v.path for v in variables]
        self.dtype = variables[0].dtype if variables else "float32"
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def names(self) -> list:
        """One readable name per flat entry, e.g. ``"npe/radial[2]"``."""
        names = []
        for path, shape in zip(self.paths, self.shapes):
            for idx in np.ndindex(*shape) if shape else [()]:
                names.append(f"{path}[{','.join(map(str, idx))}]" if idx else path)
        return names

    def unflatten(self, theta):
        """``(P,)`` tensor -> list of tensors with the variables' shapes and dtype."""
        theta = ops.cast(theta, self.dtype)
        return [
            ops.reshape(theta[int(a):int(b)], shape)
            for a, b, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)
        ]

    def flatten(self, values) -> np.ndarray:
        """List of arrays -> ``(P,)`` float64 vector."""
        values = [v.value if isinstance(v, keras.Variable) else v for v in values]
        return np.concatenate([np.asarray(ops.convert_to_numpy(v), np.float64).reshape(-1) for v in values])

    def get(self, model) -> np.ndarray:
        """The model's current parameters as a ``(P,)`` float64 vector."""
        return self.flatten(model.trainable_variables)

    def set(self, model, theta) -> None:
        """Assign a ``(P,)`` vector to the model's trainable variables."""
        theta = np.asarray(theta, np.float64).reshape(-1)
        if theta.shape[0] != self.size:
            raise ValueError(f"theta must have {self.size} entries. Received: theta.shape={theta.shape}")
        for var, a, b, shape in zip(model.trainable_variables, self.offsets[:-1], self.offsets[1:], self.shapes):
            var.assign(theta[a:b].reshape(shape))


def log_prior(theta, scale: float = DEFAULT_PRIOR_SCALE):
    """Normalised ``sum_i ln Normal(theta_i; 0, scale^2)`` over the last axis."""
    theta = ops.convert_to_tensor(theta)
    n = theta.shape[-1]
    const = -n * (math.log(scale) + 0.5 * math.log(2.0 * math.pi))
    return -0.5 * ops.sum(ops.square(theta / scale), axis=-1) + const


def _grid_terms(head, params, halo_voxel, halo_ln_mass, voxel_volume):
    """(sum over halos of ln n, V * sum over voxels of the integral) for one grid."""
    params = ops.reshape(params, (-1, params.shape[-1]))
    halo_params = ops.take(params, halo_voxel, axis=0)
    halo_term = ops.sum(head.log_number_density(halo_params, halo_ln_mass))
    expected = voxel_volume * ops.sum(head.integral_above_threshold(params))
    return halo_term, expected


class NeuralBiasLikelihood:
    """ln L(theta) and ln posterior(theta) of a :class:`NeuralBiasModel` on one or more catalogues.

    Args:
        model: a built :class:`~tfhalo.bias.model.NeuralBiasModel` whose
            ``log_mass_threshold`` equals the data's.
        data: a :class:`~tfhalo.bias.fields.BiasData` or a sequence (one per
            simulation; their log-likelihoods add).
        prior_scale: width of the Normal prior on every parameter.
        precompute_npe: evaluate the NPE from its basis responses to the fixed
            density grids (:meth:`MultipoleConv3D.basis_responses`), computed
            once, instead of convolving at every call.  Exact up to rounding,
            and it removes the convolution and its kernel gradient from every
            gradient evaluation.  Used only for a :class:`NeuralBiasModel`
            whose ``call`` is the stock ``head(npe(x))``.

    Example:
        >>> like = NeuralBiasLikelihood(model, data)
        >>> theta = like.layout.get(model)
        >>> float(like.log_likelihood(theta))
    """

    def __init__(self, model, data, prior_scale: float = DEFAULT_PRIOR_SCALE, precompute_npe: bool = True):
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive. Received: prior_scale={prior_scale}")
        self.data = as_data_list(data)
        lmt = self.data[0].log_mass_threshold
        if abs(model.log_mass_threshold - lmt) > 1e-6:
            raise ValueError(
                "model.log_mass_threshold must equal ln(mass_threshold) of the data. Received: "
                f"model.log_mass_threshold={model.log_mass_threshold}, data ln M_th={lmt}"
            )
        if not model.built:
            n = self.data[0].n_grid
            model.build((None, n, n, n, 1))
        self.model = model
        self.layout = ParameterLayout(model)
        self.prior_scale = float(prior_scale)
        dtype = self.layout.dtype
        # Grids of one shape and voxel volume go through the model as one batch:
        # one convolution per evaluation instead of one per simulation.
        groups = {}
        for i, d in enumerate(self.data):
            groups.setdefault((d.log_density.shape, d.voxel_volume), []).append(i)
        self._groups = []
        self._where = {}  # simulation index -> (its group, its position in the group's batch)
        for g, ((shape, volume), members) in enumerate(groups.items()):
            n_vox = int(np.prod(shape))
            x = np.stack([self.data[i].log_density for i in members])[..., None]
            voxel = np.concatenate([self.data[i].halo_voxel + j * n_vox for j, i in enumerate(members)])
            ln_mass = np.concatenate([self.data[i].halo_ln_mass for i in members])
            self._groups.append((
                ops.convert_to_tensor(x, dtype=dtype),
                ops.convert_to_tensor(voxel, dtype="int32"),
                ops.convert_to_tensor(ln_mass, dtype=dtype),
                volume,
            ))
            self._where.update({i: (g, j) for j, i in enumerate(members)})
        self._n_npe = stock_npe_variables(model) if precompute_npe else None
        self._responses = (
            [self.model.npe.basis_responses(group[0]) for group in self._groups] if self._n_npe is not None else None)
        # terms() is a pure function of theta (the model is called with stateless_call).  JAX runs an
        # uncompiled call op by op, compiling each small operation of the mixture head on its first call;
        # one compiled function is several times faster there, and traces into its callers' jit/grad/vmap.
        self._terms = self._grid_terms_sum
        if keras.backend.backend() == "jax":
            import jax

            compiled = jax.jit(self._grid_terms_sum)
            self._terms = lambda theta: compiled(jax.numpy.asarray(theta))  # lists too, as eager ops take them

    @property
    def n_halos(self) -> int:
        return sum(d.n_halos for d in self.data)

    @property
    def precomputed_npe(self) -> bool:
        """Whether the NPE is evaluated from precomputed basis responses (see ``precompute_npe``)."""
        return self._responses is not None

    def _params(self, theta, x):
        trainable = self.layout.unflatten(theta)
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        params, _ = self.model.stateless_call(trainable, non_trainable, x)
        return params

    def _group_params(self, theta, g):
        """Mixture parameters ``(B, n, n, n, 3K)`` of data group ``g``."""
        if self._responses is None:
            return self._params(theta, self._groups[g][0])
        return params_from_responses(self.model, self._n_npe, self.layout.unflatten(theta), self._responses[g])

    def terms(self, theta):
        """``(halo_term, expected_count)``: ``ln L = halo_term - expected_count``."""
        return self._terms(theta)

    def _grid_terms_sum(self, theta):
        halo_total, expected_total = 0.0, 0.0
        for g, (_, voxel, ln_mass, volume) in enumerate(self._groups):
            halo, expected = _grid_terms(self.model.head, self._group_params(theta, g), voxel, ln_mass, volume)
            halo_total = halo_total + halo
            expected_total = expected_total + expected
        return halo_total, expected_total

    def log_likelihood(self, theta):
        """Scalar ln L at a ``(P,)`` parameter vector (paper eq. 16)."""
        halo, expected = self.terms(theta)
        return halo - expected

    def voxel_log_likelihood(self, theta, index: int = 0) -> np.ndarray:
        """``(n^3,)`` float64 per-voxel terms of ln L on grid ``index``; they sum to that grid's ln L.

        Voxel ``v``'s term is ``sum_{h in v} ln n(M_h | psi_v) - V int_{M_th}^inf n(M | psi_v) dM``:
        given the density field the voxels' halo counts are independent Poisson
        variables, so these are the units of a standard error of ln L or of a
        difference of two models' ln L.

        Example:
            >>> terms = like.voxel_log_likelihood(theta)
            >>> np.isclose(terms.sum(), float(like.log_likelihood(theta)))   # one grid
            True
        """
        fields = self.per_voxel(theta, index)
        d = self.data[index]
        params = fields["params"].reshape(-1, fields["params"].shape[-1])
        ln_n = np.asarray(ops.convert_to_numpy(self.model.head.log_number_density(
            ops.convert_to_tensor(params[d.halo_voxel], self.layout.dtype),
            ops.convert_to_tensor(d.halo_ln_mass, self.layout.dtype))), np.float64)
        halo_terms = np.bincount(d.halo_voxel, weights=ln_n, minlength=params.shape[0])
        return halo_terms - np.asarray(fields["expected"], np.float64).reshape(-1)

    def log_prior(self, theta):
        return log_prior(ops.cast(theta, self.layout.dtype), self.prior_scale)

    def log_posterior(self, theta):
        """Unnormalised ln posterior: ln L + ln prior."""
        return self.log_likelihood(theta) + self.log_prior(theta)

    def component_shares(self, theta) -> np.ndarray:
        """``(K,)``: each mixture component's share of the expected halo count, all grids together.

        A share near 0 means the component has vanished (its other parameters
        are then bounded only by the prior): the diagnostic for chains that
        visit such a region.
        """
        head = self.model.head
        k = head.n_components
        totals = np.zeros(k)
        for g, (_, _, _, volume) in enumerate(self._groups):
            params = self._group_params(theta, g)
            for j in range(k):
                one = ops.take(params, [j, k + j, 2 * k + j], axis=-1)
                totals[j] += volume * float(ops.sum(head.integral_above_threshold(one)))
        return totals / totals.sum()

    def per_voxel(self, theta, index: int = 0) -> dict:
        """NumPy fields of grid ``index``: ``psi`` (n,n,n,F), mixture ``params`` and expected counts."""
        if not 0 <= index < len(self.data):
            raise ValueError(f"index must be in [0, {len(self.data)}). Received: index={index}")
        g, j = self._where[index]
        x = self._groups[g][0][j:j + 1]
        trainable = self.layout.unflatten(theta)
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        # psi comes from the NPE sublayer; evaluate it with the same weights.
        n_npe = len(self.model.npe.trainable_variables)
        psi = self.model.npe.stateless_call(trainable[:n_npe], [v.value for v in self.model.npe.non_trainable_variables], x)[0]
        params, _ = self.model.stateless_call(trainable, non_trainable, x)
        expected = self.model.head.integral_above_threshold(params) * self._groups[g][3]
        return {
            "psi": ops.convert_to_numpy(psi)[0],
            "params": ops.convert_to_numpy(params)[0],
            "expected": ops.convert_to_numpy(expected)[0],
        }


def params_from_responses(model, n_npe: int, trainable, responses):
    """Mixture parameters of a stock :class:`NeuralBiasModel` from its NPE's basis responses.

    Equal, up to rounding, to ``model.stateless_call(trainable, ...)`` on the grids the responses
    were computed from (:meth:`MultipoleConv3D.basis_responses`), without the convolution.

    Args:
        model: a :class:`NeuralBiasModel` for which :func:`stock_npe_variables` gives ``n_npe``.
        n_npe: the number of NPE variables leading ``trainable``.
        trainable: values of ``model.trainable_variables`` (e.g. ``ParameterLayout.unflatten(theta)``).
        responses: ``model.npe.basis_responses(x)`` of ``x (B, n, n, n, 1)``.

    Returns:
        ``(B, n, n, n, 3K)``.
    """
    npe, head = model.npe, model.head
    n_radial = len(npe.ells)
    weights = trainable[:n_npe]
    psi = npe.call_on_responses(responses, weights[:n_radial], weights[n_radial] if n_npe > n_radial else None)
    head_variables = [v.value for v in head.non_trainable_variables]
    return voxelwise(lambda x: head.stateless_call(trainable[n_npe:], head_variables, x)[0], psi)


def stock_npe_variables(model):
    """Number of NPE variables leading ``model.trainable_variables`` when ``model`` computes
    ``head(npe(x))`` with a :class:`MultipoleConv3D` NPE (so that it can be evaluated from basis
    responses), else None."""
    if not (isinstance(model, NeuralBiasModel) and type(model).call is NeuralBiasModel.call
            and type(model.npe).call is MultipoleConv3D.call and isinstance(model.npe, MultipoleConv3D)):
        return None
    npe_vars, head_vars = list(model.npe.trainable_variables), list(model.head.trainable_variables)
    if [id(v) for v in model.trainable_variables] != [id(v) for v in npe_vars + head_vars]:
        return None
    if model.npe.non_trainable_variables or len(npe_vars) != len(model.npe.ells) + (model.npe.bias is not None):
        return None
    return len(npe_vars)
