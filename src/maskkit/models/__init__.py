"""Models: one factory (:func:`create`) over a registry of builders (:func:`list_models`)."""

from maskkit.models.registry import ModelInfo, create, list_models, model_info, register_model

__all__ = ["ModelInfo", "create", "list_models", "model_info", "register_model"]
