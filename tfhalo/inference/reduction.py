"""Keeping a large block of coordinates only every ``thin``-th draw, with per-draw summaries.

A field-level posterior has one coordinate per grid cell: 64^3 white-noise values
times 4 chains times 4,000 draws is 33 GB in float64, in memory and again in the
checkpoint.  Most of what a run reports needs far less: a few numbers per draw
(the power in each ``|k|`` bin, for R-hat and ESS), the posterior mean over all
draws, and a thinned set of draws for intervals and maps.  A
:class:`DrawReduction` passed to :func:`~tfhalo.inference.sample` or
:func:`~tfhalo.inference.sample_gibbs` keeps exactly that, block by block, as the
chains run: coordinates ``[start, stop)`` are kept at draws ``0, thin, 2 thin,
...``, their sum over every draw is accumulated, and ``summary_fn`` is evaluated
on every draw of them; all other coordinates are kept at every draw.  Memory and
checkpoint then grow as ``(stop - start) / thin`` per draw instead of
``stop - start``.

Example:
    >>> import numpy as np
    >>> r = DrawReduction(start=0, stop=3, thin=2, summary_fn=lambda x: {"sq": (x**2).sum(-1)}, key="sq")
    >>> block = r.reduce_block(np.arange(2 * 1 * 4, dtype=float).reshape(2, 1, 4), offset=0)
    >>> block["draws"].shape, block["thinned"].shape, block["s_sq"].shape
    ((2, 1, 1), (1, 1, 3), (2, 1))
"""

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from tfhalo.validation import check_int


@dataclasses.dataclass(frozen=True)
class DrawReduction:
    """Which coordinates a sampler keeps thinned, and what it records of them at every draw.

    Attributes:
        start, stop: the thinned coordinates ``[start, stop)`` of a draw's ``P``
            (``0 <= start < stop``; ``stop <= P`` is checked by the sampler).
        thin: they are kept at draws ``0, thin, 2 thin, ...`` of the kept draws (``>= 1``).
        summary_fn: optional NumPy function of ``(n, C, stop - start)`` float64 draws
            returning a dict of ``(n, C, ...)`` arrays; evaluated on every kept draw.
            It must be deterministic: a checkpoint stores its values.
        key: a string identifying ``summary_fn`` (and whatever it depends on, such as
            bin edges) in the checkpoint's fingerprint, so that a checkpoint written
            with another summary is refused rather than mixed in.
    """

    start: int
    stop: int
    thin: int = 1
    summary_fn: Optional[Callable] = None
    key: str = ""

    def __post_init__(self):
        start = check_int("start", self.start, minimum=0)
        stop = check_int("stop", self.stop, minimum=start + 1)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "thin", check_int("thin", self.thin, minimum=1))
        if self.summary_fn is not None and not callable(self.summary_fn):
            raise ValueError(f"summary_fn must be callable or None. Received: summary_fn={self.summary_fn!r}")
        if not isinstance(self.key, str):
            raise ValueError(f"key must be a string. Received: key={self.key!r}")

    @property
    def size(self) -> int:
        """The number of thinned coordinates, ``stop - start``."""
        return self.stop - self.start

    def identity(self) -> dict:
        """What a checkpoint's fingerprint holds of this reduction."""
        return dict(start=self.start, stop=self.stop, thin=self.thin, key=self.key,
                    summary=self.summary_fn is not None)

    def check(self, num_params: int) -> None:
        """Refuse coordinates outside a draw of ``num_params``."""
        if self.stop > num_params:
            raise ValueError(f"reduction.stop must be at most the number of parameters ({num_params}). "
                             f"Received: reduction.stop={self.stop}")

    def reduce_block(self, draws: np.ndarray, offset: int) -> dict:
        """One block of draws as the arrays a checkpoint block keeps.

        Args:
            draws: ``(n, C, P)`` draws, the block's first at kept-draw index ``offset``.
            offset: the index of the block's first draw among the kept draws.

        Returns:
            ``draws`` ``(n, C, P - size)`` (the other coordinates), ``thinned``
            ``(n', C, size)`` at the indices in ``thinned_index`` ``(n',)``, ``thinned_sum``
            ``(C, size)`` over the block's ``n`` draws, and ``s_<name>`` ``(n, C, ...)`` per summary.
        """
        draws = np.asarray(draws, np.float64)
        inside = draws[..., self.start:self.stop]
        index = offset + np.arange(draws.shape[0])
        keep = index % self.thin == 0
        out = dict(draws=np.concatenate([draws[..., :self.start], draws[..., self.stop:]], axis=-1),
                   thinned=inside[keep], thinned_index=index[keep], thinned_sum=inside.sum(axis=0))
        if self.summary_fn is not None:
            summaries = self.summary_fn(inside)
            if not isinstance(summaries, dict):
                raise ValueError(f"summary_fn must return a dict of arrays. Received: {type(summaries).__name__}")
            for name, value in summaries.items():
                value = np.asarray(value)
                if value.shape[:2] != draws.shape[:2]:
                    raise ValueError(f"summary_fn's '{name}' must have leading shape (n, C) = {draws.shape[:2]}. "
                                     f"Received: shape {value.shape}")
                out[f"s_{name}"] = value
        return out

    @staticmethod
    def join(blocks: Sequence[dict], num_draws: int) -> "ThinnedDraws":
        """The thinned part of a run from its blocks (as :meth:`reduce_block` returns them)."""
        names = [k[2:] for k in blocks[0] if k.startswith("s_")]
        return ThinnedDraws(samples=np.concatenate([b["thinned"] for b in blocks]),
                            index=np.concatenate([b["thinned_index"] for b in blocks]).astype(np.int64),
                            mean=np.sum([b["thinned_sum"] for b in blocks], axis=0) / num_draws,
                            summaries={k: np.concatenate([b[f"s_{k}"] for b in blocks]) for k in names})


@dataclasses.dataclass
class ThinnedDraws:
    """The thinned coordinates of a run sampled with a :class:`DrawReduction`.

    Attributes:
        samples: ``(S', C, size)`` the coordinates at the kept draws ``index``.
        index: ``(S',)`` which of the ``S`` kept draws they are (``0, thin, ...``).
        mean: ``(C, size)`` their mean over all ``S`` draws of each chain.
        summaries: ``summary_fn``'s values at all ``S`` draws, ``(S, C, ...)`` each.
    """

    samples: np.ndarray
    index: np.ndarray
    mean: np.ndarray
    summaries: dict

    @staticmethod
    def concatenate_chains(parts: Sequence["ThinnedDraws"]) -> "ThinnedDraws":
        """Chain groups' thinned draws joined along the chain axis (they share ``index``)."""
        return ThinnedDraws(samples=np.concatenate([p.samples for p in parts], axis=1), index=parts[0].index,
                            mean=np.concatenate([p.mean for p in parts], axis=0),
                            summaries={k: np.concatenate([p.summaries[k] for p in parts], axis=1)
                                       for k in parts[0].summaries})


def check_reduction(reduction) -> Optional[DrawReduction]:
    """``reduction`` if it is a :class:`DrawReduction` or None; a clear error otherwise."""
    if reduction is not None and not isinstance(reduction, DrawReduction):
        raise ValueError(f"reduction must be a DrawReduction or None. Received: reduction={reduction!r}")
    return reduction


def reduce_block(reduction: Optional[DrawReduction], draws: np.ndarray, offset: int) -> dict:
    """``{"draws": draws}`` without a reduction, else :meth:`DrawReduction.reduce_block`."""
    if reduction is None:
        return dict(draws=np.asarray(draws))
    return reduction.reduce_block(draws, offset)


def join_blocks(reduction: Optional[DrawReduction], blocks: Sequence[dict]):
    """``(samples, thinned)`` of a run's blocks: the kept coordinates ``(S, C, P')`` and the thinned part."""
    samples = np.concatenate([b["draws"] for b in blocks])
    if reduction is None:
        return samples, None
    return samples, DrawReduction.join(blocks, samples.shape[0])
