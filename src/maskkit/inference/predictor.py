"""``Predictor``: a trained checkpoint ready for inference, ``predict(image) -> Instances``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskkit.engine.config import TrainConfig
from maskkit.structures import Instances


class Predictor:
    """Load a maskkit checkpoint (weights-only) and predict instances with dataset category ids.

    ``Predictor("runs/x/best.pt").predict(image)`` takes an ``H×W×C`` array or an image path and
    returns :class:`Instances` with XYXY boxes, labels (the dataset's category ids), scores and RLE masks.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        ema: bool = True,
        score_threshold: float = 0.05,
        classes: Sequence[int] | None = None,
    ) -> None:
        from maskkit.engine.checkpoint import load_checkpoint
        from maskkit.engine.model import build_model
        from maskkit.engine.trainer import resolve_device

        path = Path(checkpoint)
        if path.is_dir():
            path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
        ckpt = load_checkpoint(path)
        self.config = TrainConfig.model_validate(ckpt["config"])
        self.class_names: list[str] = list(ckpt["class_names"])
        self.category_ids: list[int] = [int(c) for c in ckpt["category_ids"]]
        model = build_model(self.config, len(self.category_ids), pretrained=False)
        state = ckpt["ema"]["module"] if ema and ckpt.get("ema") else ckpt["model"]
        model.load_state_dict(state)
        self.device = resolve_device(device)
        self.model: nn.Module = model.to(self.device).eval()
        self.score_threshold = score_threshold
        self.classes = None if classes is None else {int(c) for c in classes}

    def _tensor(self, image: np.ndarray | str | Path) -> torch.Tensor:
        from maskkit.data.dataset import convert_channels, normalise_image
        from maskkit.data.images import read_image

        array = read_image(Path(image)) if isinstance(image, str | Path) else np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        aug = self.config.augment
        chw = np.ascontiguousarray(convert_channels(array, aug.channels).transpose(2, 0, 1))
        return torch.from_numpy(normalise_image(chw, aug.normalise, aug.fixed_max))

    @torch.inference_mode()
    def predict(self, image: np.ndarray | str | Path, score_threshold: float | None = None) -> Instances:
        """Instances of one image: boxes XYXY, labels (dataset category ids), scores, RLE masks."""
        from maskkit.engine.postprocess import to_instances

        x = self._tensor(image)
        out = self.model([x.to(self.device)])[0]
        inst = to_instances(out, tuple(x.shape[-2:]), self.category_ids)
        thr = self.score_threshold if score_threshold is None else score_threshold
        keep = np.asarray(inst.scores) >= thr
        if self.classes is not None:
            keep &= np.isin(np.asarray(inst.labels), sorted(self.classes))
        return inst[keep]


def load(checkpoint: str | Path, device: str = "auto", ema: bool = True) -> Predictor:
    """``maskkit.load``: a :class:`Predictor` for a checkpoint or a run folder (best.pt, else last.pt)."""
    return Predictor(checkpoint, device=device, ema=ema)
