"""Attribution methods: CAMs from ``grad-cam`` (pytorch_grad_cam) on tapped layers, pixel attributions from
``captum`` on the model's input. Both libraries come with the ``explain`` extra and are imported lazily.

Every method returns a map on the padded model input, non-negative and scaled to ``[0, 1]``: the CAMs as
grad-cam computes them (ReLU, per-layer min-max scaling, mean over the layers), the pixel attributions as the
positive part of their sum over channels (``saliency``: the gradient's magnitude), divided by its maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from maskkit.errors import ConfigError

CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
"""``--method`` name -> pytorch_grad_cam class. ``eigencam`` uses no gradients: the first principal component
of the layer's activations, the same map for every target."""
PIXEL_METHODS: dict[str, str] = {
    "saliency": "Saliency",
    "input-x-gradient": "InputXGradient",
    "integrated-gradients": "IntegratedGradients",
}
"""``--method`` name -> captum.attr class (attributions of the model's input pixels)."""
METHODS = (*CAM_METHODS, *PIXEL_METHODS)
DEFAULT_METHOD = "hirescam"
"""HiResCAM (gradient x activation, summed over channels) keeps *where* a target's gradient arrives; Grad-CAM's
channel weights (the gradient averaged over the map) then light up every object that activates those channels,
so its maps of one nucleus show all the nuclei of the image (1-5 % of the mass in the nucleus's box, measured
on the nuclei Mask R-CNN)."""
TARGET_FREE = frozenset({"eigencam"})
IG_STEPS = 16
HINT = "maskkit explain needs the explain extra: pip install 'maskkit[explain]' (grad-cam and captum)"


def check_method(method: str) -> str:
    """``method`` lower-cased, or a ConfigError listing the known ones."""
    name = method.strip().lower()
    if name not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; known: {', '.join(METHODS)}")
    return name


def _library(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(HINT) from None


def require_libraries(method: str) -> None:
    """Import the method's library now: a one-line hint (ConfigError) when the extra is missing."""
    _library("pytorch_grad_cam" if method in CAM_METHODS else "captum.attr")


class _LayerCapture:
    """Activations and gradients of grad-cam's target layers, kept *per layer*.

    grad-cam's own capture appends gradients in the order they arrive, assuming the reverse of the forward order;
    parallel branches (FPN levels, encoder stages that all feed a decoder) break that, and a level the target
    does not reach (a box pooled from another FPN level) sends no gradient at all. Here each layer keeps its own,
    zeros when none came. Same interface as ``pytorch_grad_cam.activations_and_gradients.ActivationsAndGradients``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        self.model = model
        self._acts: dict[int, Tensor] = {}
        self._grads: dict[int, Tensor] = {}
        self.handles = [layer.register_forward_hook(partial(self._hook, i)) for i, layer in enumerate(layers)]
        self.count = len(layers)

    def _hook(self, index: int, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self._acts[index] = output.detach().cpu()
        if output.requires_grad:
            output.register_hook(partial(self._store, index))

    def _store(self, index: int, grad: Tensor) -> None:
        self._grads[index] = grad.detach().cpu()

    @property
    def activations(self) -> list[Tensor]:
        return [self._acts[i] for i in range(self.count) if i in self._acts]

    @property
    def gradients(self) -> list[Tensor]:
        return [self._grads.get(i, torch.zeros_like(self._acts[i])) for i in range(self.count) if i in self._acts]

    def __call__(self, x: Tensor) -> Any:
        self._acts, self._grads = {}, {}
        return self.model(x)

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def cam_map(method: str, module: nn.Module, x: Tensor, target: Callable[[Any], Tensor],
            layers: Sequence[nn.Module]) -> np.ndarray:
    """The ``H' x W'`` CAM of ``target`` (of ``module(x)[0]``) over ``layers``, in ``[0, 1]``."""
    lib = _library("pytorch_grad_cam")
    cam = getattr(lib, CAM_METHODS[method])(model=module, target_layers=list(layers))
    cam.activations_and_grads.release()
    cam.activations_and_grads = _LayerCapture(module, layers)
    try:
        with torch.enable_grad():
            grayscale = cam(input_tensor=x.detach().clone().requires_grad_(True), targets=[target])
    finally:
        cam.activations_and_grads.release()
    return np.asarray(grayscale[0], dtype=np.float32)


def pixel_map(method: str, module: nn.Module, x: Tensor, target: Callable[[Any], Tensor]) -> np.ndarray:
    """The ``H' x W'`` captum attribution of ``target`` to the input pixels: positive part, scaled to ``[0, 1]``."""
    attr = _library("captum.attr")

    def forward(batch: Tensor) -> Tensor:
        return torch.stack([target(out) for out in module(batch)])

    algo = getattr(attr, PIXEL_METHODS[method])(forward)
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if method == "integrated-gradients":  # baseline: zeros of the normalised input (the mean colour)
            result = algo.attribute(inputs, n_steps=IG_STEPS, internal_batch_size=4)
        elif method == "saliency":
            result = algo.attribute(inputs, abs=True)
        else:
            result = algo.attribute(inputs)
    values = result.detach().float().sum(1)[0].clamp(min=0).cpu().numpy()
    top = float(values.max(initial=0.0))
    return (values / top if top > 0 else values).astype(np.float32)


def attribution(method: str, module: nn.Module, x: Tensor, target: Callable[[Any], Tensor],
                layers: Sequence[nn.Module]) -> np.ndarray:
    """One map of ``target`` by ``method`` (a CAM over ``layers``, or a pixel attribution)."""
    if method in CAM_METHODS:
        return cam_map(method, module, x, target, layers)
    return pixel_map(method, module, x, target)
