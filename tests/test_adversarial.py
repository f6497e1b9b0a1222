"""FGSM/PGD on the models' own losses, and training with corruption augmentation and adversarial examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY_MASKRCNN, tiny_config
from maskkit.config import TrainConfig
from maskkit.data.dataset import InstanceDataset, collate_fn
from maskkit.data.splits import load_split
from maskkit.data.synth import write_synthetic
from maskkit.engine.adversarial import AdversarialTraining, attack, fgsm, model_loss, pgd
from maskkit.errors import ConfigError
from maskkit.models.factory import build_model, uses_semantic_targets
from maskkit.perf import trained_like_batchnorm

TINY_BOTTOMUP = tiny_config(model={"name": "bottomup_mbv2", "pretrained_backbone": False,
                                   "options": {"decoder_channels": [16, 16, 16, 16, 16]}})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adv")
    write_synthetic(root / "data", images=6, size=64, seed=1, workers=1)
    return root / "data"


def _batch(data: Path, cfg: TrainConfig) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    aset = load_split(data, "train")
    ds = InstanceDataset.from_config(aset, cfg.augment, train=False, semantic=uses_semantic_targets(cfg))
    return collate_fn([ds[0], ds[1]])


@pytest.mark.parametrize("base", [TINY_MASKRCNN, TINY_BOTTOMUP], ids=["maskrcnn", "bottomup"])
def test_attacks_raise_the_loss_within_eps(data: Path, base: dict[str, Any], one_thread: None) -> None:
    cfg = TrainConfig.model_validate(tiny_config(base, data={"path": str(data)}))
    torch.manual_seed(0)
    model = trained_like_batchnorm(build_model(cfg, 3, pretrained=False))
    model.eval()
    images, targets = _batch(data, cfg)
    loss = model_loss(model, targets)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def measured(xs: list[torch.Tensor]) -> float:
        torch.manual_seed(5)  # Mask R-CNN samples proposals at random in train mode: the same draws each time
        with torch.no_grad():
            return float(loss(xs))

    clean = measured(images)
    eps = 8 / 255
    for adv in (fgsm(loss, images, eps), pgd(loss, images, eps, steps=4, generator=torch.Generator().manual_seed(0))):
        for x, x0 in zip(adv, images, strict=True):
            assert x.shape == x0.shape and x.dtype == x0.dtype
            assert float((x - x0).abs().max()) <= eps + 1e-6
            assert float(x.min()) >= 0 and float(x.max()) <= 1
            assert float((x - x0).abs().max()) > eps / 2
        assert measured(adv) > clean
    assert not model.training  # the attack leaves the mode ...
    for k, v in model.state_dict().items():  # ... and every weight and BatchNorm statistic as they were
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert [torch.equal(a, b) for a, b in zip(fgsm(loss, images, 0.0), images, strict=True)] == [True, True]


def test_attack_errors() -> None:
    with pytest.raises(ConfigError, match="unknown attack 'cw'"):
        attack("cw", lambda xs: xs[0].sum(), [torch.zeros(1, 2, 2)], 0.1)
    with pytest.raises(ConfigError, match="eps"):
        fgsm(lambda xs: xs[0].sum(), [torch.zeros(1, 2, 2)], -1.0)
    with pytest.raises(ConfigError, match="steps"):
        AdversarialTraining("pgd", 0.1, 0, 1.0)


def test_adversarial_training_perturbs_the_chosen_fraction() -> None:
    model = torch.nn.Conv2d(1, 1, 1)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            return {"loss_x": sum((self.net(x[None]) - t["y"]).pow(2).mean() for x, t in zip(images, targets,
                                                                                             strict=True))}

    images = [torch.full((1, 4, 4), 0.5) for _ in range(4)]
    targets = [{"y": torch.zeros(())} for _ in range(4)]
    torch.manual_seed(0)
    assert AdversarialTraining("fgsm", 0.1, 1, 0.0)(Wrapped(), images, targets) is images
    out = AdversarialTraining("fgsm", 0.1, 1, 1.0)(Wrapped(), images, targets)
    assert all(float((a - b).abs().max()) == pytest.approx(0.1) for a, b in zip(out, images, strict=True))


@pytest.mark.parametrize("base", [TINY_MASKRCNN, TINY_BOTTOMUP], ids=["maskrcnn", "bottomup"])
def test_training_with_corruptions_and_adversarial_examples(tmp_path: Path, data: Path, base: dict[str, Any],
                                                            one_thread: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import maskkit
    import maskkit.data.transforms as transforms
    import maskkit.engine.adversarial as adversarial

    calls = {"corrupt": 0, "attack": 0}
    real_transform, real_attack = transforms.RandomCorruption.transform, adversarial.attack

    def counting_transform(self: Any, inpt: Any, params: dict[str, Any]) -> Any:
        calls["corrupt"] += params["name"] is not None
        return real_transform(self, inpt, params)

    def counting_attack(*args: Any, **kwargs: Any) -> Any:
        calls["attack"] += 1
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(transforms.RandomCorruption, "transform", counting_transform)
    monkeypatch.setattr(adversarial, "attack", counting_attack)
    cfg = tiny_config(base, data={"path": str(data), "val_fraction": 0.0, "batch_size": 3},
                      augment={"min_size": [64], "max_size": None,
                               "corruption": {"p": 1.0, "severities": [2, 3], "names": ["noise", "microscopy"]}},
                      adversarial={"method": "pgd", "eps": 2 / 255, "steps": 2, "fraction": 1.0},
                      output={**TINY_MASKRCNN["output"], "out": str(tmp_path / "run")})
    result = maskkit.train(cfg)
    assert result.steps == 2
    assert calls == {"corrupt": 6, "attack": 2}
    losses = [row["loss"] for row in result.history if "loss" in row] or [1.0]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    saved = TrainConfig.model_validate(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert saved.adversarial.fraction == 1.0 and saved.augment.corruption.p == 1.0
