"""Order a pool for labelling: uncertainty with a diversity term, k-center greedy (core-set), random.

Distances are Euclidean between L2-normalised embeddings. ``d_i`` is image ``i``'s distance to the nearest
image already picked (or already labelled: ``centers``); it shrinks as images are picked. Greedy picks:

* uncertainty strategies: the highest ``u_i × (d_i / 2) ** weight`` (``d / 2`` is in [0, 1] for unit vectors,
  1 before anything is picked; ties: higher ``u_i``, then pool order); with ``weight = 0`` the plain uncertainty
  order. An exact duplicate of a picked image has ``d = 0`` and so goes
  after every image that is not one (unless every remaining uncertainty is 0);
* ``diversity``: the highest ``d_i`` (k-center greedy, the core-set approximation); without ``centers`` the
  first pick is the image nearest the pool's mean embedding (the most typical one);
* ``random``: a permutation seeded by ``seed``.

Each returns the pick order and the value each image was picked with (its ``score``), and ``d_i`` at its pick.
"""

from __future__ import annotations

import numpy as np

__all__ = ["diverse_order", "k_center_order", "random_order"]


def _distances(emb: np.ndarray, point: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(((emb - point) ** 2).sum(axis=1), 0.0))


def _initial(emb: np.ndarray, centers: np.ndarray | None) -> np.ndarray:
    """Distance of each image to the nearest center (infinite without centers)."""
    d = np.full(len(emb), np.inf)
    if centers is not None:
        for c in np.asarray(centers, np.float64).reshape(-1, emb.shape[1]):
            d = np.minimum(d, _distances(emb, c))
    return d


def diverse_order(uncertainty: np.ndarray, emb: np.ndarray, weight: float = 0.5,
                  centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy order by ``u × (d / 2) ** weight``; returns (order, score at pick, distance at pick)."""
    u = np.asarray(uncertainty, np.float64)
    n = len(u)
    emb = np.asarray(emb, np.float64).reshape(n, -1)
    d = _initial(emb, centers)
    left = np.ones(n, bool)
    order, scores, dists = [], [], []
    for _ in range(n):
        factor = np.ones(n) if weight == 0 else np.where(np.isinf(d), 1.0, np.minimum(d / 2, 1.0) ** weight)
        gain = u * factor
        # best gain, then best uncertainty, then pool order (lexsort: last key first)
        cand = np.flatnonzero(left)
        best = cand[np.lexsort((cand, -u[cand], -gain[cand]))[0]]
        order.append(best)
        scores.append(gain[best])
        dists.append(d[best])
        left[best] = False
        d = np.minimum(d, _distances(emb, emb[best]))
    return np.asarray(order, np.int64), np.asarray(scores), np.asarray(dists)


def k_center_order(emb: np.ndarray, centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy over the whole pool; returns (order, distance at pick)."""
    emb = np.asarray(emb, np.float64).reshape(len(emb), -1)
    n = len(emb)
    d = _initial(emb, centers)
    left = np.ones(n, bool)
    order, dists = [], []
    if centers is None and n:  # the most typical image first
        first = int(np.argmin(_distances(emb, emb.mean(axis=0))))
        order.append(first)
        dists.append(np.inf)
        left[first] = False
        d = _distances(emb, emb[first])
    for _ in range(n - len(order)):
        cand = np.flatnonzero(left)
        best = cand[int(np.argmax(d[cand]))]
        order.append(best)
        dists.append(d[best])
        left[best] = False
        d = np.minimum(d, _distances(emb, emb[best]))
    return np.asarray(order, np.int64), np.asarray(dists)


def random_order(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation and uniform scores in decreasing order."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    order = np.argsort(-scores, kind="stable")
    return order, scores[order]
