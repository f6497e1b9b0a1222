"""``maskkit robustness``: a model under common corruptions and adversarial attacks (:func:`run_robustness`)."""

from maskkit.robustness.runner import RobustnessResult, run_robustness

__all__ = ["RobustnessResult", "run_robustness"]
