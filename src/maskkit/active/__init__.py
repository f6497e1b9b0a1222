"""Active learning: rank unlabeled images by how much labelling them should help (``maskkit select``).

:mod:`~maskkit.active.uncertainty` turns one model output into per-image uncertainty components and a
foreground map (for disagreement between stochastic or augmented passes); :mod:`~maskkit.active.probe` runs
a checkpoint and captures pooled encoder features (the embeddings); :mod:`~maskkit.active.ranking` orders the
pool (uncertainty times a diversity term, k-center greedy, random); :mod:`~maskkit.active.select` ties them
together and writes ``ranking.csv`` plus the top K as LabelMe (and COCO) pre-annotations.
"""

from __future__ import annotations

STRATEGIES = ("entropy", "margin", "mc-dropout", "diversity", "random")
"""The ranking strategies of ``maskkit select --strategy``."""

__all__ = ["STRATEGIES"]
