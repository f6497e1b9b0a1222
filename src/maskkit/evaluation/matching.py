"""Instance matching metrics on RLE masks: TP/FP/FN, precision/recall/F1, DSB score, AJI.

* Matching (per image, at IoU thresholds 0.5:0.05:0.95 by default): an optimal one-to-one assignment
  (Hungarian, ``scipy.optimize.linear_sum_assignment``) that maximises the number of pairs with
  ``IoU >= t`` and, among those, the total IoU (the StarDist cost). Pairs below ``t`` are never matched.
  For ``t >= 0.5`` the matches are unique anyway, so Hungarian and greedy give the same counts.
  ``TP`` = matched pairs, ``FP`` = unmatched predictions, ``FN`` = unmatched GT.
* ``dsb_score`` = TP / (TP + FP + FN), the 2018 Data Science Bowl score, per threshold and averaged.
* AJI (Kumar et al. 2017): each GT takes the prediction of maximal IoU (a prediction may serve several
  GT; GT without any overlapping prediction add only their own area); ``C`` sums the intersections, ``U``
  the unions plus the areas of predictions no GT took; ``AJI = C / U``. AJI+ (Graham et al. 2019) uses a
  one-to-one Hungarian pairing on IoU instead.

IoU is pycocotools ``iou`` with ``iscrowd=0`` on compressed RLEs; intersections are recovered exactly from
IoU and areas (``I = round(iou * (a + b) / (1 + iou))``, integers). Only one image's ``G×P`` IoU matrix is
ever held; accumulators keep counts. Ratios that would be 0/0 are ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maskkit.errors import DataError
from maskkit.evaluation.base import ImageStore, MaskEvaluator, Pairing, PreparedImage
from maskkit.structures.masks import RLE, Masks, masks_iou

MaskInput = Masks | Sequence[RLE] | np.ndarray
LabelInput = Sequence[int] | np.ndarray | None
"""Per-instance class labels (None: one class)."""
"""Instance masks of one image: ``Masks``, a list of COCO RLE dicts, or an ``N×H×W`` boolean array."""

IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 10).tolist())
"""0.5, 0.55, …, 0.95 rounded to exact decimals (``np.linspace`` gives 0.8999999999999999)."""


def as_masks(masks: MaskInput) -> Masks:
    """Wrap any :data:`MaskInput` as ``Masks`` (no copy for ``Masks``; RLE counts may be str/bytes/list)."""
    if isinstance(masks, Masks):
        return masks
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise DataError(f"dense instance masks must be N×H×W, got shape {masks.shape}")
        return Masks.from_bitmaps(masks, masks.shape[1], masks.shape[2])
    rles = list(masks)
    if not rles:
        return Masks.empty(0, 0)
    try:
        h, w = (int(v) for v in rles[0]["size"])
        return Masks.from_rles(rles, h, w)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"not a list of COCO RLE masks: {exc}") from exc


def as_rles(masks: MaskInput) -> list[RLE]:
    """Compressed RLEs (``counts`` bytes) of any :data:`MaskInput`."""
    return as_masks(masks).to_rles()


def check_same_size(gt: Masks, pred: Masks) -> None:
    if len(gt) and len(pred) and (gt.height, gt.width) != (pred.height, pred.width):
        raise DataError(f"GT masks are {gt.height}x{gt.width} but predictions are {pred.height}x{pred.width}")


def as_labels(labels: Any, n: int, what: str) -> np.ndarray:
    if labels is None:
        return np.zeros(n, dtype=np.int64)
    arr = np.asarray(labels).reshape(-1)
    if len(arr) != n:
        raise DataError(f"{what} has {len(arr)} labels for {n} masks")
    return arr.astype(np.int64)


def safe_div(num: Any, den: Any) -> Any:
    """``num / den`` elementwise, ``nan`` where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out if out.ndim else float(out)


def intersections(iou: np.ndarray, gt_areas: np.ndarray, pred_areas: np.ndarray) -> np.ndarray:
    """Exact pixel intersections of a ``G×P`` IoU matrix and areas: ``round(iou * (a + b) / (1 + iou))``."""
    return _pair_intersections(iou, gt_areas[:, None], pred_areas[None, :])


def _pair_intersections(iou: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter: np.ndarray = np.rint(iou * (a + b) / (1.0 + iou))
    return inter


def match_at_threshold(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of a ``G×P`` IoU matrix at ``IoU >= threshold``.

    Maximises the number of matched pairs, then their total IoU (Hungarian on the StarDist cost
    ``-[iou >= t] - iou / (2 min(G, P))``). Returns matched ``(gt_indices, pred_indices)``, by GT index.
    When no row or column has two pairs at ``>= threshold`` (the rule for ``t > 0.5`` and
    non-overlapping masks) those pairs are the matching, without Hungarian.
    """
    ok = iou >= threshold
    if not ok.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if ok.sum(0).max() <= 1 and ok.sum(1).max() <= 1:
        gi, pi = np.nonzero(ok)
        return gi.astype(np.int64), pi.astype(np.int64)
    from scipy.optimize import linear_sum_assignment  # imported when needed: scipy.optimize takes 0.3 s

    rows, cols = np.flatnonzero(ok.any(1)), np.flatnonzero(ok.any(0))  # only rows/cols that can match
    sub_ok = ok[np.ix_(rows, cols)]
    sub = np.where(sub_ok, iou[np.ix_(rows, cols)], 0.0)
    cost = -sub_ok.astype(np.float64) - sub / (2.0 * min(sub.shape))
    r, c = linear_sum_assignment(cost)
    keep = sub_ok[r, c]
    return rows[r[keep]], cols[c[keep]]


def matched_counts(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``T×G`` bool: which GT rows are matched at each threshold (as :func:`match_at_threshold`)."""
    out = np.zeros((len(thresholds), iou.shape[0]), dtype=bool)
    if not iou.size:
        return out
    ok = iou[None] >= thresholds[:, None, None]
    unique = (ok.sum(2).max(1) <= 1) & (ok.sum(1).max(1) <= 1)
    out[unique] = ok[unique].any(2)
    for k in np.flatnonzero(~unique):
        out[k, match_at_threshold(iou, thresholds[k])[0]] = True
    return out


def aji_counts(iou: np.ndarray, gt_areas: np.ndarray, pred_areas: np.ndarray) -> tuple[float, float]:
    """AJI numerator ``C`` and denominator ``U`` of one image (Kumar et al. 2017, see module doc)."""
    if not len(gt_areas):
        return 0.0, float(pred_areas.sum())
    if not len(pred_areas):
        return 0.0, float(gt_areas.sum())
    inter = intersections(iou, gt_areas, pred_areas)
    best = iou.argmax(axis=1)
    rows = np.arange(len(gt_areas))
    paired = iou[rows, best] > 0
    i_best = inter[rows, best]
    c = float(i_best[paired].sum())
    u = float((gt_areas + pred_areas[best] - i_best)[paired].sum() + gt_areas[~paired].sum())
    used = np.zeros(len(pred_areas), dtype=bool)
    used[best[paired]] = True
    return c, u + float(pred_areas[~used].sum())


def aji_plus_counts(iou: np.ndarray, gt_areas: np.ndarray, pred_areas: np.ndarray) -> tuple[float, float]:
    """AJI+ numerator and denominator: one-to-one Hungarian pairing on IoU (pairs with IoU > 0)."""
    if not len(gt_areas) or not len(pred_areas):
        return 0.0, float(gt_areas.sum() + pred_areas.sum())
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(-iou)
    keep = iou[r, c] > 0
    inter = float(_pair_intersections(iou[r, c][keep], gt_areas[r[keep]], pred_areas[c[keep]]).sum())
    return inter, float(gt_areas.sum() + pred_areas.sum() - inter)


def aggregated_jaccard_index(gt: MaskInput, pred: MaskInput) -> float:
    """AJI of one image (``nan`` when it has neither GT nor predictions)."""
    g, p = as_masks(gt), as_masks(pred)
    check_same_size(g, p)
    c, u = aji_counts(masks_iou(g, p), g.areas(), p.areas())
    return float(safe_div(c, u))


class MatchingAccumulator:
    """Streaming instance-matching metrics over a dataset (TP/FP/FN, P/R/F1, DSB score, AJI, AJI+).

    ``add`` one image at a time; only integer counts per threshold (and per class) are kept. There is no
    crowd handling: drop crowd GT before ``add`` (they would count as FN).

    Args:
        thresholds: IoU thresholds (default 0.5:0.05:0.95).
        class_aware: match only GT and predictions of the same label (labels required in ``add``);
            otherwise labels are ignored. AJI is always class-agnostic.
    """

    def __init__(self, thresholds: Sequence[float] = IOU_THRESHOLDS, class_aware: bool = False) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        self.class_aware = class_aware
        t = len(self.thresholds)
        self._class_blocks: list[tuple[np.ndarray, np.ndarray]] = []  # per image: labels, C×3×T counts
        self._counts = np.zeros((3, t), dtype=np.int64)  # rows: tp, fp, fn
        self._dsb_image_sum = 0.0
        self._dsb_images = 0
        self._aji = np.zeros(2)  # C, U summed over images
        self._aji_plus = np.zeros(2)
        self._aji_image_sum = 0.0
        self._aji_images = 0
        self.num_images = 0
        self.num_gt = 0
        self.num_pred = 0

    def add(self, gt_masks: MaskInput, pred_masks: MaskInput, gt_labels: LabelInput = None,
            pred_labels: LabelInput = None) -> dict[str, Any]:
        """Match one image; returns its counts ``{"tp", "fp", "fn"}`` (int arrays, one per threshold)."""
        g, p = as_masks(gt_masks), as_masks(pred_masks)
        check_same_size(g, p)
        if self.class_aware and ((gt_labels is None and len(g)) or (pred_labels is None and len(p))):
            raise DataError("class-aware matching needs gt_labels and pred_labels")
        gl, pl = as_labels(gt_labels, len(g), "gt_labels"), as_labels(pred_labels, len(p), "pred_labels")
        return self.add_iou(masks_iou(g, p), g.areas(), p.areas(), gl, pl)

    def add_iou(self, iou: np.ndarray, gt_areas: np.ndarray, pred_areas: np.ndarray, gt_labels: np.ndarray,
                pred_labels: np.ndarray) -> dict[str, Any]:
        """:meth:`add` from a computed class-agnostic ``G×P`` mask IoU, pixel areas and int labels."""
        self._add_aji(iou, gt_areas, pred_areas)
        gl, pl = gt_labels, pred_labels
        n_g, n_p = len(gl), len(pl)
        if self.class_aware:
            iou = np.where(gl[:, None] == pl[None, :], iou, 0.0)
        matched = matched_counts(iou, self.thresholds)  # T×G
        tp = matched.sum(1)
        image = np.stack([tp, n_p - tp, n_g - tp]).astype(np.int64)
        if self.class_aware and (n_g or n_p):
            classes, inv = np.unique(np.concatenate([gl, pl]), return_inverse=True)
            gi, pi = inv[:n_g], inv[n_g:]
            onehot = np.zeros((n_g, len(classes)), dtype=np.int64)
            onehot[np.arange(n_g), gi] = 1
            tp_c = matched.astype(np.int64) @ onehot  # T×C
            ng_c, np_c = np.bincount(gi, minlength=len(classes)), np.bincount(pi, minlength=len(classes))
            self._class_blocks.append((classes, np.stack([tp_c, np_c - tp_c, ng_c - tp_c]).transpose(2, 0, 1)))
        self._counts += image
        if n_g or n_p:
            self._dsb_image_sum += float(np.mean(image[0] / image.sum(axis=0)))
            self._dsb_images += 1
        self.num_images += 1
        self.num_gt += n_g
        self.num_pred += n_p
        return {"tp": image[0], "fp": image[1], "fn": image[2]}

    def _add_aji(self, iou: np.ndarray, ga: np.ndarray, pa: np.ndarray) -> None:
        c, u = aji_counts(iou, ga, pa)
        self._aji += (c, u)
        self._aji_plus += aji_plus_counts(iou, ga, pa)
        if u > 0:
            self._aji_image_sum += c / u
            self._aji_images += 1

    def _per_class(self) -> dict[int, np.ndarray]:
        """Label -> ``3×T`` counts (tp, fp, fn) summed over the images (integers: any order is exact)."""
        if not self._class_blocks:
            return {}
        labels, inverse = np.unique(np.concatenate([c for c, _ in self._class_blocks]), return_inverse=True)
        total = np.zeros((len(labels), 3, len(self.thresholds)), dtype=np.int64)
        np.add.at(total, inverse.reshape(-1), np.concatenate([b for _, b in self._class_blocks]))
        return {int(c): total[k] for k, c in enumerate(labels.tolist())}

    def _scores(self, counts: np.ndarray) -> dict[str, Any]:
        tp, fp, fn = counts.astype(np.float64)
        out: dict[str, Any] = {
            "tp": counts[0].tolist(),
            "fp": counts[1].tolist(),
            "fn": counts[2].tolist(),
            "precision": safe_div(tp, tp + fp),
            "recall": safe_div(tp, tp + fn),
            "f1": safe_div(2 * tp, 2 * tp + fp + fn),
            "dsb_score": safe_div(tp, tp + fp + fn),
        }
        for name in ("precision", "recall", "f1", "dsb_score"):
            out[name] = np.atleast_1d(out[name]).tolist()
        return out

    def result(self) -> dict[str, Any]:
        """Dataset metrics.

        Keys: ``thresholds``; ``per_threshold`` (dict of lists aligned with ``thresholds``: ``tp``, ``fp``,
        ``fn``, ``precision``, ``recall``, ``f1``, ``dsb_score``); means over thresholds ``precision``,
        ``recall``, ``f1``, ``dsb_score`` (from counts pooled over the dataset); ``<metric>@<t>`` for
        t = 0.50 and 0.75 when evaluated (e.g. ``f1@0.50``); ``dsb_score_image_mean`` (the Kaggle
        leaderboard form: per-image mean over thresholds, averaged over images with any instance);
        ``aji`` (dataset level: sum of C over images / sum of U), ``aji_image_mean`` (mean of per-image
        AJI), ``aji_plus`` (dataset level); ``num_images``, ``num_gt``, ``num_pred``; with
        ``class_aware``, ``per_class`` ``{label: per-threshold dict + mean f1 and dsb_score}``.
        """
        per = self._scores(self._counts)
        out: dict[str, Any] = {"thresholds": self.thresholds.tolist(), "per_threshold": per}
        for name in ("precision", "recall", "f1", "dsb_score"):
            out[name] = float(np.mean(per[name])) if len(self.thresholds) else float("nan")
            for k, t in enumerate(self.thresholds):
                if any(np.isclose(t, (0.5, 0.75))):
                    out[f"{name}@{t:.2f}"] = per[name][k]
        out["dsb_score_image_mean"] = safe_div(self._dsb_image_sum, self._dsb_images)
        out["aji"] = safe_div(self._aji[0], self._aji[1])
        out["aji_image_mean"] = safe_div(self._aji_image_sum, self._aji_images)
        out["aji_plus"] = safe_div(self._aji_plus[0], self._aji_plus[1])
        out.update(num_images=self.num_images, num_gt=self.num_gt, num_pred=self.num_pred)
        if self.class_aware:
            out["per_class"] = {}
            per_class = self._per_class()
            for c in sorted(per_class):
                s = self._scores(per_class[c])
                s.update(f1_mean=float(np.mean(s["f1"])), dsb_score_mean=float(np.mean(s["dsb_score"])))
                out["per_class"][c] = s
        return out


class MatchingEvaluator(MaskEvaluator):
    """The ``matching`` section: :class:`MatchingAccumulator` over the non-crowd GT and the predictions
    scoring ``>= score_threshold``; class-aware when the store has more than one category (or as told)."""

    def __init__(self, store: ImageStore | None = None, score_threshold: float = 0.5,
                 class_aware: bool | None = None) -> None:
        super().__init__(store, score_threshold)
        self.class_aware = len(self.store.categories) > 1 if class_aware is None else class_aware
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.accumulator = MatchingAccumulator(class_aware=self.class_aware)

    def add(self, image: PreparedImage, pairing: Pairing) -> None:
        self.accumulator.add_iou(pairing.iou, pairing.gt_areas, pairing.pred_areas,
                                 image.gt.labels[pairing.regular], image.dt.labels[pairing.keep])

    def evaluate(self) -> dict[str, Any]:
        if not self.accumulator.num_images:
            return {}
        return {"matching": {**self.accumulator.result(), "score_threshold": self.score_threshold}}
