"""Periodic friends-of-friends halos and their properties.

Groups are the connected components of the graph linking every pair of
particles closer than the linking length (periodic distances), found with
``scipy.spatial.cKDTree(boxsize=L).query_pairs`` and
``scipy.sparse.csgraph.connected_components``.

Halo properties (:func:`halo_properties`):

* centre: the members are first unwrapped to the periodic image nearest the
  group's first member (exact for groups smaller than half the box); the
  centre is their centre of mass refined by a shrinking sphere (Power et al.
  2003, MNRAS 338, 14, arXiv:astro-ph/0201544: radius x0.85 per step, down
  to 5% of the members or 10 members), which finds the dominant density peak
  of merging or bridged FoF groups;
  wrapped into ``[0, L)``;
* r200: the radius of the sphere of mean density ``200 * rho_mean`` that holds
  ``M200 = m_p * i*`` where ``i*`` is the largest member count ``i`` for which
  the ``i`` members nearest the centre have a mean density of at least
  ``200 rho_mean`` inside the ``i``-th member's radius, i.e.
  ``r200 = (3 M200 / (4 pi 200 rho_mean))^(1/3)`` with ``M200`` measured from
  the members only (FoF particles outside the group are ignored). It lies
  between the ``i*``-th and the next member's radius. When the profile is
  not resolved (``i* < 0.1 n_members``: the 200 rho_mean sphere holds less
  than a tenth of the group, as happens when the force smoothing of a
  coarse particle mesh puffs small halos up), r200 falls back to the radius
  of a sphere of mean density ``200 rho_mean`` holding the FoF mass;
* each member's ``r / r200``.

Example:
    >>> import numpy as np
    >>> pos = np.random.default_rng(0).uniform(0, 10, (2000, 3))
    >>> labels = friends_of_friends(pos, 10.0, linking_length=0.3, min_members=5)
    >>> cat, r_rel = halo_properties(pos, labels, 10.0, particle_mass=1e10, rho_mean=7.7e10)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from tfhalo.sim.grid import minimum_image, wrap_periodic
from tfhalo.sim.simulation import HaloCatalogue
from tfhalo.validation import check_float, check_int


def friends_of_friends(positions, box_size: float, linking_length: float, min_members: int = 20) -> np.ndarray:
    """Periodic friends-of-friends group finder.

    Args:
        positions: ``(N, 3)`` positions (wrapped periodically into the box).
        box_size: box side, Mpc/h.
        linking_length: absolute linking length in Mpc/h (for the usual
            ``b = 0.2`` use ``0.2 * box_size / n_side``); pairs at distance
            ``<= linking_length`` are friends.
        min_members: smallest group kept.

    Returns:
        ``(N,)`` int64 group label per particle, ``-1`` for particles in no
        group with at least ``min_members`` members; groups are numbered
        ``0, 1, ...`` by decreasing size (ties: by smallest particle index).
    """
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3). Received: positions.shape={positions.shape}")
    box_size = check_float("box_size", box_size, positive=True)
    linking_length = check_float("linking_length", linking_length)
    if not 0 < linking_length < 0.5 * box_size:
        raise ValueError(
            f"linking_length must be in (0, box_size/2). Received: linking_length={linking_length}, box_size={box_size}"
        )
    min_members = check_int("min_members", min_members, minimum=1)
    n = positions.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # sliding-midpoint tree without node compaction: builds ~2x faster and
    # queries as fast for clustered particles
    tree = cKDTree(wrap_periodic(positions, box_size), boxsize=float(box_size), balanced_tree=False,
                   compact_nodes=False)
    pairs = tree.query_pairs(float(linking_length), output_type="ndarray")
    del tree
    graph = scipy.sparse.csr_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    )
    del pairs
    # weak components of the i<j pair graph = components of the undirected
    # graph, without symmetrising it (half the time)
    _, comp = connected_components(graph, directed=True, connection="weak")
    del graph
    sizes = np.bincount(comp)
    first = np.full(sizes.shape[0], n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n))
    keep = np.flatnonzero(sizes >= int(min_members))
    order = keep[np.lexsort((first[keep], -sizes[keep]))]
    relabel = np.full(sizes.shape[0], -1, dtype=np.int64)
    relabel[order] = np.arange(order.shape[0])
    return relabel[comp]


def _shrinking_sphere(d, lab, centre, counts, factor=0.85, stop_fraction=0.05, stop_min=10, max_iter=60):
    """Shrinking-sphere centres (Power et al. 2003), all groups at once.

    Starting from the centre of mass and the sphere holding every member, the
    radius shrinks by ``factor`` and the centre moves to the mean of the
    members inside, until fewer than ``max(stop_min, stop_fraction * n)``
    members would remain.

    Args:
        d: ``(M, 3)`` unwrapped member offsets from their group's reference.
        lab: ``(M,)`` group of each member.
        centre: ``(H, 3)`` starting centres (centres of mass), same frame.
        counts: ``(H,)`` members per group.

    Returns:
        ``(H, 3)`` centres in the frame of ``d``.
    """
    centre = centre.copy()
    n_halos = centre.shape[0]
    stop = np.minimum(np.maximum(stop_min, np.ceil(stop_fraction * counts)), counts)
    # working set: offsets and groups of the members inside their group's sphere
    dw, lw = d, lab
    diff = dw - centre[lw]
    r2 = np.einsum("ij,ij->i", diff, diff)
    radius2 = np.zeros(n_halos)
    np.maximum.at(radius2, lw, r2)
    f2 = factor**2
    for _ in range(max_iter):
        radius2_new = radius2 * f2
        inside = r2 <= radius2_new[lw]
        n_in = np.bincount(lw[inside], minlength=n_halos)
        ok = n_in >= stop
        if not np.any(ok):
            break
        keep = inside & ok[lw]
        dw, lw = dw[keep], lw[keep]
        sums = np.stack([np.bincount(lw, weights=dw[:, j], minlength=n_halos) for j in range(3)], axis=1)
        centre[ok] = sums[ok] / n_in[ok, None]
        # groups that stopped have left the working set for good
        radius2 = np.where(ok, radius2_new, 0.0)
        diff = dw - centre[lw]
        r2 = np.einsum("ij,ij->i", diff, diff)
    return centre


def halo_properties(
    positions, labels, box_size: float, particle_mass: float, rho_mean: float, shrink: bool = True
) -> Tuple[HaloCatalogue, np.ndarray]:
    """Mass, periodic-safe centre and r200 of labelled groups.

    Args:
        positions: ``(N, 3)`` positions, Mpc/h.
        labels: ``(N,)`` group labels ``0..H-1`` or -1 (from
            :func:`friends_of_friends`).
        box_size: box side, Mpc/h.
        particle_mass: mass of one particle, Msun/h.
        rho_mean: mean matter density, (Msun/h)/(Mpc/h)^3.
        shrink: refine the centre of mass with a shrinking sphere (the
            density peak; default). False: the centre of mass.

    Returns:
        ``(catalogue, r_over_r200)``: a :class:`HaloCatalogue` with ``H``
        halos and the ``(N,)`` float64 distance of each particle to its halo
        centre over the halo's r200 (nan outside halos).
    """
    positions = np.asarray(positions, dtype=np.float64)
    labels = np.asarray(labels)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3). Received: positions.shape={positions.shape}")
    if labels.shape != (positions.shape[0],):
        raise ValueError(f"labels must have shape ({positions.shape[0]},). Received: labels.shape={labels.shape}")
    box_size = check_float("box_size", box_size, positive=True)
    particle_mass = check_float("particle_mass", particle_mass, positive=True)
    rho_mean = check_float("rho_mean", rho_mean, positive=True)
    r_rel = np.full(positions.shape[0], np.nan)
    members = np.flatnonzero(labels >= 0)
    if members.size == 0:
        return HaloCatalogue.empty(), r_rel
    lab = labels[members].astype(np.int64)
    n_halos = int(lab.max()) + 1
    pos = wrap_periodic(positions[members], box_size)
    counts = np.bincount(lab, minlength=n_halos)
    if np.any(counts == 0):
        raise ValueError("labels must be consecutive 0..H-1 (a label between has no members)")

    # unwrap each member to the image nearest the group's first member
    first = np.full(n_halos, members.size, dtype=np.int64)
    np.minimum.at(first, lab, np.arange(members.size))
    ref = pos[first][lab]
    d = minimum_image(pos - ref, box_size)
    centre_off = np.stack([np.bincount(lab, weights=d[:, j], minlength=n_halos) for j in range(3)], axis=1)
    centre_off /= counts[:, None]
    if shrink:
        centre_off = _shrinking_sphere(d, lab, centre_off, counts)
    centre = wrap_periodic(pos[first] + centre_off, box_size)

    dc = d - centre_off[lab]
    r = np.sqrt(np.einsum("ij,ij->i", dc, dc))

    # cumulative member counts inside each member's radius, per group
    order = np.lexsort((r, lab))
    r_sorted, lab_sorted = r[order], lab[order]
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(members.size) - start[lab_sorted] + 1  # 1..n_members
    threshold = 200.0 * rho_mean
    with np.errstate(divide="ignore"):
        dens = rank * particle_mass / (4.0 / 3.0 * np.pi * r_sorted**3)
    ok = dens >= threshold
    n200 = np.zeros(n_halos, dtype=np.int64)
    np.maximum.at(n200, lab_sorted[ok], rank[ok])
    # unresolved profile (the 200 rho_mean sphere holds < 10% of the members,
    # e.g. halos fluffed up by the PM force smoothing): use the FoF mass
    n200 = np.where(n200 >= np.ceil(0.1 * counts), n200, counts)
    m200 = n200 * particle_mass
    r200 = (3.0 * m200 / (4.0 * np.pi * threshold)) ** (1.0 / 3.0)

    r_rel[members] = r / r200[lab]
    cat = HaloCatalogue(mass=counts * particle_mass, centre=centre, r200=r200, n_members=counts)
    return cat, r_rel
