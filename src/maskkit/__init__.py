"""maskkit: instance and semantic segmentation, from annotations to deployment."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
