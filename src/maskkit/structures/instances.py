"""``Instances``: the per-image structure every stage of maskkit speaks.

In the spirit of Detectron2's ``Instances``, but small and NumPy-based (the data layer never
imports torch). It holds the image size and any number of per-instance fields of equal length.
Conventional fields:

* ``boxes``  – ``(N, 4)`` float32 XYXY in pixels
* ``labels`` – ``(N,)`` int64 category ids (dataset ids in annotation sets, contiguous in models)
* ``scores`` – ``(N,)`` float32, predictions only
* ``masks``  – :class:`~maskkit.structures.masks.Masks`
* ``iscrowd`` – ``(N,)`` bool; ``ids`` – ``(N,)`` int64 annotation ids;
  ``extras`` – list of dicts with format-specific fields preserved for lossless writing
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from maskkit.structures.masks import Masks, _normalise_index


class Instances:
    """Per-image instances: ``Instances((h, w), boxes=..., labels=..., masks=...)``.

    Index with an int, slice, integer array or boolean array to get a new ``Instances``.
    """

    def __init__(self, image_size: tuple[int, int], **fields: Any) -> None:
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the image."""
        return self._image_size

    # -- field access ---------------------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AttributeError(f"field names cannot start with '_': {name!r}")
        if self._fields and len(value) != len(self):
            raise ValueError(f"field {name!r} has length {len(value)}, other fields have {len(self)}")
        self._fields[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name, default)

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self._fields)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"Instances has no field {name!r}; fields: {list(self._fields)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    # -- sequence protocol ----------------------------------------------------------------------
    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("Instances is not iterable; index it or read its fields")

    def __getitem__(self, index: Any) -> Instances:
        if isinstance(index, int | np.integer):
            i = int(index)
            if i >= len(self) or i < -len(self):
                raise IndexError(f"instance index {i} out of range for {len(self)} instances")
            index = [i % len(self)]
        idx = _normalise_index(index, len(self))
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            out._fields[name] = _take(value, idx)
        return out

    def __repr__(self) -> str:
        return f"Instances(num_instances={len(self)}, image_size={self._image_size}, fields={list(self._fields)})"

    @staticmethod
    def cat(items: Sequence[Instances]) -> Instances:
        """Concatenate instances of the same image (same size and fields)."""
        if not items:
            raise ValueError("cannot concatenate an empty list of Instances")
        size = items[0].image_size
        names = list(items[0]._fields)
        for it in items[1:]:
            if it.image_size != size or list(it._fields) != names:
                raise ValueError("Instances.cat needs the same image size and fields in every item")
        out = Instances(size)
        for name in names:
            values = [it._fields[name] for it in items]
            first = values[0]
            if isinstance(first, Masks):
                out._fields[name] = Masks.cat(values)
            elif isinstance(first, np.ndarray):
                out._fields[name] = np.concatenate(values, axis=0)
            elif isinstance(first, list):
                out._fields[name] = [v for vs in values for v in vs]
            elif hasattr(first, "__class__") and first.__class__.__module__.startswith("torch"):
                import torch

                out._fields[name] = torch.cat(values, dim=0)
            else:
                raise TypeError(f"cannot concatenate field {name!r} of type {type(first).__name__}")
        return out

    # -- conveniences ---------------------------------------------------------------------------
    @classmethod
    def from_masks(
        cls,
        masks: Masks,
        labels: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None = None,
        **fields: Any,
    ) -> Instances:
        """Instances whose boxes are the tight boxes of ``masks``."""
        inst = cls((masks.height, masks.width), boxes=masks.boxes(), labels=np.asarray(labels, dtype=np.int64))
        if scores is not None:
            inst.scores = np.asarray(scores, dtype=np.float32)
        inst.masks = masks
        for k, v in fields.items():
            inst.set(k, v)
        return inst

    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True) -> Instances:
        inst = cls(image_size, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))
        if with_masks:
            inst.masks = Masks.empty(*image_size)
        return inst


def _take(value: Any, idx: list[int]) -> Any:
    if isinstance(value, Masks):
        return value[idx]
    if isinstance(value, np.ndarray):
        return value[np.asarray(idx, dtype=np.int64)]
    if isinstance(value, list):
        return [value[i] for i in idx]
    if value.__class__.__module__.startswith("torch"):
        import torch

        return value[torch.as_tensor(idx, dtype=torch.long, device=value.device)]
    return value[idx]
