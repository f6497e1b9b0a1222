"""Models: one factory (:func:`create`) over a registry of builders (:func:`list_models`) that declare their
:class:`Capabilities`."""

from maskkit.models.registry import Capabilities, InputSpec, ModelInfo, create, list_models, model_info, register_model

__all__ = ["Capabilities", "InputSpec", "ModelInfo", "create", "list_models", "model_info", "register_model"]
