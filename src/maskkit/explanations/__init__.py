"""Explanations of a model's predictions: saliency maps per instance or class, feature maps per level
(:func:`explain`; ``maskkit explain`` writes them as overlay pictures and contact sheets). Needs the
``explain`` extra (grad-cam, captum)."""

from maskkit.explanations.api import Explainer, Explanation, MapInfo, explain, mass_in_box

__all__ = ["Explainer", "Explanation", "MapInfo", "explain", "mass_in_box"]
