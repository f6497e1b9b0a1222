"""Common image corruptions at five severities: the ImageNet-C / COCO-C set plus microscopy and inspection shifts.

``corrupt(image, name, severity, seed)`` takes an ``H×W×C`` uint8 image (``C`` 1 or 3; other channel counts are
corrupted channel by channel) and returns a new uint8 image of the same shape. The result is a pure function of
``(image, name, severity, seed)``; within one seed the random draws are shared by the severities, so a higher
severity is the same corruption, stronger.

Where albumentations (the ``robustness`` extra) has the transform it is used with parameters fixed per severity
by our tables (:data:`CORRUPTIONS`, each entry's ``params``); the rest is our own numpy/OpenCV/scikit-image code.
Entries marked ``mirrors`` use the severity parameters of Hendrycks & Dietterich's ImageNet-C (2019), which
Michaelis et al.'s COCO-C (2019) applies unchanged to detection images; the others are scaled by us, as noted.

``geometric`` corruptions (``elastic_transform``) move pixels but not the annotations (as in COCO-C): they are
for evaluation only and refused by corruption training. ``rgb`` ones (stain and hue shifts) need 3 channels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from maskkit.errors import ConfigError

Fn = Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``fn(image, params[severity - 1], rng)`` on an ``H×W×C`` uint8 image (C 1 or 3)."""

    name: str
    group: str
    """``noise``, ``blur``, ``weather``, ``digital`` (the ImageNet-C groups) or ``microscopy``."""
    params: tuple[Any, ...]
    """The parameter of each severity 1..5."""
    fn: Fn
    mirrors: bool
    """The parameters are ImageNet-C's (else scaled by maskkit, see the function)."""
    geometric: bool = False
    rgb: bool = False
    albumentations: bool = False


# -- albumentations glue --------------------------------------------------------------------------------------
def _albu(make: Callable[[Any, Any], Any]) -> Fn:
    """A corruption running the albumentations transform ``make(param)`` (always applied, seeded from ``rng``)."""

    def fn(image: np.ndarray, param: Any, rng: np.random.Generator) -> np.ndarray:
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
        try:
            import albumentations as A
        except ImportError:
            raise ConfigError("this corruption needs albumentations: pip install 'maskkit[robustness]'") from None
        transform = A.Compose([make(param, A)], p=1.0, seed=int(rng.integers(2**31)))
        out = transform(image=np.ascontiguousarray(image))["image"]
        return np.asarray(out).reshape(image.shape)

    return fn


# -- our own corruptions ----------------------------------------------------------------------------------------
def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _shot_noise(image: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise of ``photons`` photons at full scale (ImageNet-C's formula)."""
    return _to_uint8(rng.poisson(_to_float(image) * photons) / photons)


def _speckle_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(image)
    return _to_uint8(x + x * rng.standard_normal(x.shape, dtype=np.float32) * std)


def _plasma(shape: tuple[int, int], decay: float, rng: np.random.Generator) -> np.ndarray:
    """Fractal (multi-octave value) noise in ``[0, 1]``; each finer octave weighs ``1 / decay`` of the previous."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    weight, cells = 1.0, 2
    while cells <= max(h, w) // 2:
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        out += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        weight /= decay
        cells *= 2
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _fog(image: np.ndarray, param: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's fog formula: a fractal haze of strength ``c0`` (octave decay ``c1``) added, then rescaled."""
    c0, c1 = param
    x = _to_float(image)
    peak = float(x.max())
    x = x + c0 * _plasma(x.shape[:2], c1, rng)[:, :, None]
    return _to_uint8(x * peak / (peak + c0))


def _hsv(image: np.ndarray, change: Callable[[np.ndarray], None]) -> np.ndarray:
    """Apply ``change`` to the float HSV (H in degrees, S and V in [0, 1]) of an RGB image; grey: V only."""
    if image.shape[2] == 1:
        v = _to_float(image)[:, :, 0]
        hsv = np.stack([np.zeros_like(v), np.zeros_like(v), v], axis=2)
        change(hsv)
        return _to_uint8(np.clip(hsv[:, :, 2:], 0, 1))
    hsv = np.asarray(cv2.cvtColor(_to_float(image), cv2.COLOR_RGB2HSV), dtype=np.float32)
    change(hsv)
    hsv[:, :, 0] = np.mod(hsv[:, :, 0], 360.0)
    hsv[:, :, 1:] = np.clip(hsv[:, :, 1:], 0, 1)
    return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def _brightness(image: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    def change(hsv: np.ndarray) -> None:
        hsv[:, :, 2] += c

    return _hsv(image, change)


def _contrast(image: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = _to_float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def _hue_shift(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """A stain colour change: every hue rotated by ``degrees`` (direction drawn from ``rng``)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0

    def change(hsv: np.ndarray) -> None:
        hsv[:, :, 0] += sign * degrees

    return _hsv(image, change)


def _hed_jitter(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Stain variation in H&E: the haematoxylin, eosin and DAB densities (colour deconvolution) scaled by
    ``1 + sigma * a`` and shifted by ``sigma * b / 10``, with ``a, b`` uniform in [-1, 1] per stain (Tellez et al.
    2018's HED jitter; ``rng`` draws ``a, b`` once, the severity scales them)."""
    from skimage.color import hed_from_rgb, rgb_from_hed  # Ruifrok & Johnston's stain vectors

    a = rng.uniform(-1.0, 1.0, 3)
    b = rng.uniform(-1.0, 1.0, 3)
    # optical densities (as skimage's rgb2hed, without its clipping of negative densities: an exact round trip)
    od = -np.log(np.maximum(image.astype(np.float64) / 255.0, 1e-6))
    hed = od @ hed_from_rgb
    hed = hed * (1.0 + sigma * a) + sigma * b / 10.0
    return _to_uint8(np.exp(-(hed @ rgb_from_hed)))


def _gamma(image: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """An exposure/detector response change: ``x ** gamma`` (above 1 darkens the mid-tones)."""
    return _to_uint8(_to_float(image) ** gamma)


def _vignette(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination (microscope vignetting, inspection lighting): brightness falls to ``1 - strength``
    towards the corners from a centre drawn near the middle."""
    h, w = image.shape[:2]
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2) / np.sqrt(0.5)
    field = 1.0 - strength * np.clip(r, 0, 1) ** 2
    return _to_uint8(_to_float(image) * field[:, :, None])


def _elastic(image: np.ndarray, param: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """albumentations' elastic displacement; ``alpha`` and ``sigma`` are fractions of the shorter image side."""
    side = float(min(image.shape[:2]))
    alpha, sigma = param
    return _albu(lambda p, A: A.ElasticTransform(alpha=alpha * side, sigma=sigma * side, p=1.0))(image, None, rng)


def _c(name: str, group: str, params: Sequence[Any], fn: Fn, mirrors: bool, **kw: Any) -> Corruption:
    return Corruption(name, group, tuple(params), fn, mirrors, **kw)


_INTER = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    # noise (ImageNet-C: gaussian std, Poisson photons, salt-and-pepper amount, speckle std)
    _c("gaussian_noise", "noise", (0.08, 0.12, 0.18, 0.26, 0.38),
       _albu(lambda s, A: A.GaussNoise(std_range=(s, s), per_channel=True, p=1.0)), True, albumentations=True),
    _c("shot_noise", "noise", (60, 25, 12, 5, 3), _shot_noise, True),
    _c("impulse_noise", "noise", (0.03, 0.06, 0.09, 0.17, 0.27),
       _albu(lambda s, A: A.SaltAndPepper(amount=(s, s), salt_vs_pepper=(0.5, 0.5), p=1.0)), True,
       albumentations=True),
    _c("speckle_noise", "noise", (0.15, 0.2, 0.35, 0.45, 0.6), _speckle_noise, True),
    # blur (defocus: disc radius and alias blur; glass: sigma, max delta, iterations; zoom: max factor and step)
    _c("defocus_blur", "blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
       _albu(lambda p, A: A.Defocus(radius=(p[0], p[0]), alias_blur=(p[1], p[1]), p=1.0)), True, albumentations=True),
    _c("glass_blur", "blur", ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
       _albu(lambda p, A: A.GlassBlur(sigma=p[0], max_delta=p[1], iterations=p[2], mode="fast", p=1.0)), True,
       albumentations=True),
    # ImageNet-C's motion blur is ImageMagick's (radius, sigma); here a line kernel of that many pixels
    _c("motion_blur", "blur", (7, 11, 15, 21, 27),
       _albu(lambda k, A: A.MotionBlur(blur_limit=(k, k), allow_shifted=False, p=1.0)), False, albumentations=True),
    _c("zoom_blur", "blur", ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
       _albu(lambda p, A: A.ZoomBlur(max_factor=(p[0], p[0]), step_factor=(p[1], p[1]), p=1.0)), True,
       albumentations=True),
    _c("gaussian_blur", "blur", (1, 2, 3, 4, 6),
       _albu(lambda s, A: A.GaussianBlur(sigma_limit=(s, s), p=1.0)), True, albumentations=True),
    # weather-like (fog: ImageNet-C's haze strengths 1.5..3, then 3.5, at one fractal decay (ImageNet-C varies it
    # too, which made the haze finer but not monotonically stronger); brightness: ImageNet-C's HSV value shift)
    _c("fog", "weather", ((1.5, 2.0), (2.0, 2.0), (2.5, 2.0), (3.0, 2.0), (3.5, 2.0)), _fog, False),
    _c("brightness", "weather", (0.1, 0.2, 0.3, 0.4, 0.5), _brightness, True),
    # digital (contrast factor, JPEG quality, pixelate scale; elastic: our fractions of the image side)
    _c("contrast", "digital", (0.4, 0.3, 0.2, 0.1, 0.05), _contrast, True),
    _c("jpeg_compression", "digital", (25, 18, 15, 10, 7),
       _albu(lambda q, A: A.ImageCompression(compression_type="jpeg", quality_range=(q, q), p=1.0)), True,
       albumentations=True),
    _c("pixelate", "digital", (0.6, 0.5, 0.4, 0.3, 0.25),
       _albu(lambda s, A: A.Downscale(scale_range=(s, s), interpolation_pair=_INTER, p=1.0)), True,
       albumentations=True),
    _c("elastic_transform", "digital", ((0.5, 0.05), (1.0, 0.05), (1.5, 0.05), (2.0, 0.05), (3.0, 0.05)),
       _elastic, False, geometric=True, albumentations=True),
    # microscopy and inspection shifts (our scales)
    _c("hue_shift", "microscopy", (5, 10, 20, 35, 50), _hue_shift, False, rgb=True),
    _c("hed_jitter", "microscopy", (0.05, 0.1, 0.2, 0.3, 0.4), _hed_jitter, False, rgb=True),
    _c("gamma", "microscopy", (1.25, 1.5, 2.0, 2.5, 3.0), _gamma, False),
    _c("vignette", "microscopy", (0.15, 0.3, 0.45, 0.6, 0.75), _vignette, False),
)}
"""Every corruption by name (defocus is ``defocus_blur``)."""

IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
              "zoom_blur", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
"""The 15 ImageNet-C benchmark corruptions less frost (it needs ImageNet-C's texture photographs) and snow (no
faithful, severity-monotone implementation here: albumentations' snow is a different effect)."""

SEVERITIES = (1, 2, 3, 4, 5)


def corruption_names(names: str | Sequence[str] | None = None, training: bool = False) -> list[str]:
    """The corruption names of a comma-separated string or list (``None``/``all``: every one; ``imagenet-c``: the
    benchmark set); unknown names raise :class:`ConfigError`. ``training``: geometric ones are refused, and left
    out of ``all``."""
    if names is None or names == "all" or names == ["all"]:
        return [n for n, c in CORRUPTIONS.items() if not (training and c.geometric)]
    items = [s.strip() for s in (names.split(",") if isinstance(names, str) else names) if s.strip()]
    out: list[str] = []
    for item in items:
        group = list(IMAGENET_C) if item in ("imagenet-c", "coco-c") else \
            [n for n, c in CORRUPTIONS.items() if c.group == item] or [item]
        for n in group:
            if n not in CORRUPTIONS:
                raise ConfigError(f"unknown corruption {n!r}; choose from {', '.join(CORRUPTIONS)} (or a group: "
                                  "noise, blur, weather, digital, microscopy, imagenet-c, all)")
            if training and CORRUPTIONS[n].geometric:
                raise ConfigError(f"corruption {n!r} moves pixels but not the masks: evaluation only, not training")
            if n not in out:
                out.append(n)
    return out


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``image`` (``H×W×C`` or ``H×W`` uint8) under corruption ``name`` at ``severity`` 1..5 (module docstring)."""
    if name not in CORRUPTIONS:
        corruption_names([name])  # raises the error naming the choices
    c = CORRUPTIONS[name]
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be 1..5, got {severity!r}")
    if image.dtype != np.uint8:
        raise ConfigError(f"corruptions take uint8 images, got {image.dtype}")
    grey = image.ndim == 2
    x = image[:, :, None] if grey else image
    if x.ndim != 3:
        raise ConfigError(f"corruptions take H×W×C images, got shape {image.shape}")
    channels = x.shape[2]
    if c.rgb and channels != 3:
        raise ConfigError(f"corruption {name!r} needs RGB images, got {channels} channel(s)")
    param = c.params[severity - 1]
    if channels in (1, 3):
        out = c.fn(np.ascontiguousarray(x), param, np.random.default_rng(seed))
    else:  # each channel as a grey image, with the same draws
        out = np.concatenate([c.fn(np.ascontiguousarray(x[:, :, i : i + 1]), param, np.random.default_rng(seed))
                              for i in range(channels)], axis=2)
    out = np.asarray(out, dtype=np.uint8).reshape(x.shape)
    return out[:, :, 0] if grey else out


def corrupt_tensor(x: Any, name: str, severity: int, seed: int = 0) -> Any:
    """A model-input image (float ``C×H×W`` torch tensor in ``[0, 1]``) under a corruption, through 8 bits."""
    import torch

    hwc = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return torch.from_numpy(corrupt(hwc, name, severity, seed)).permute(2, 0, 1).float().div_(255.0)


def applicable(name: str, channels: int) -> bool:
    """Whether corruption ``name`` applies to images of ``channels`` channels."""
    return not CORRUPTIONS[name].rgb or channels == 3


def severity_table() -> list[dict[str, Any]]:
    """One row per corruption: name, group, the five parameters, whether they mirror ImageNet-C, the library."""
    return [{"name": c.name, "group": c.group, "params": [list(p) if isinstance(p, tuple) else p for p in c.params],
             "mirrors_imagenet_c": c.mirrors, "geometric": c.geometric, "rgb_only": c.rgb,
             "implementation": "albumentations" if c.albumentations else "maskkit"} for c in CORRUPTIONS.values()]
