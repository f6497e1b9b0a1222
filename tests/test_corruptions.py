"""The corruption set: deterministic per seed, stronger with severity, shapes and dtypes kept, clear errors."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from maskkit.data.corruptions import CORRUPTIONS, IMAGENET_C, corrupt, corruption_names, severity_table
from maskkit.errors import ConfigError


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = np.full((96, 128, 3), 60, np.uint8)
    cv2.circle(img, (40, 40), 20, (200, 120, 90), -1)
    cv2.rectangle(img, (70, 30), (110, 80), (90, 200, 150), -1)
    return cv2.GaussianBlur(img, (5, 5), 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_shape_dtype_and_monotone(image: np.ndarray, name: str) -> None:
    outs = [corrupt(image, name, s, seed=3) for s in range(1, 6)]
    for out in outs:
        assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(corrupt(image, name, 3, seed=3), outs[2])
    assert not np.array_equal(outs[0], image)
    scores = [psnr(image, o) for o in outs]
    # pixelate aliases: a scale of exactly 1/2 lines up with the pixel grid better than 0.6 does
    slack = 3.0 if name == "pixelate" else 0.05
    assert all(b <= a + slack for a, b in itertools.pairwise(scores)), scores
    assert scores[-1] < scores[0] - 1.0, scores


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "hed_jitter",
                                  "elastic_transform", "vignette"])
def test_seed_changes_random_corruptions(image: np.ndarray, name: str) -> None:
    assert not np.array_equal(corrupt(image, name, 3, seed=0), corrupt(image, name, 3, seed=1))


@pytest.mark.parametrize("name", [n for n, c in CORRUPTIONS.items() if not c.rgb])
def test_grey_and_multichannel(image: np.ndarray, name: str) -> None:
    grey = image[:, :, 1]
    out = corrupt(grey, name, 2, seed=0)
    assert out.shape == grey.shape and out.dtype == np.uint8
    two = image[:, :, :2]
    out2 = corrupt(two, name, 2, seed=0)
    assert out2.shape == two.shape
    assert np.array_equal(out2[:, :, :1], corrupt(two[:, :, :1], name, 2, seed=0))


def test_errors(image: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        corrupt(image, "rain", 1)
    with pytest.raises(ConfigError, match=r"severity must be 1\.\.5"):
        corrupt(image, "fog", 6)
    with pytest.raises(ConfigError, match="uint8"):
        corrupt(image.astype(np.uint16), "fog", 1)
    with pytest.raises(ConfigError, match="needs RGB"):
        corrupt(image[:, :, 0], "hue_shift", 1)
    with pytest.raises(ConfigError, match="evaluation only"):
        corruption_names("elastic_transform", training=True)


def test_names_and_table() -> None:
    assert corruption_names("imagenet-c") == list(IMAGENET_C)
    assert corruption_names("noise,fog") == ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "fog"]
    assert "elastic_transform" not in corruption_names(None, training=True)
    assert len(corruption_names(None)) == len(CORRUPTIONS)
    rows = {r["name"]: r for r in severity_table()}
    assert rows["gaussian_noise"]["params"] == [0.08, 0.12, 0.18, 0.26, 0.38]
    assert rows["jpeg_compression"]["mirrors_imagenet_c"] and rows["jpeg_compression"]["implementation"] == \
        "albumentations"
    assert not rows["hue_shift"]["mirrors_imagenet_c"]
