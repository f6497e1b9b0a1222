"""Hyperparameter search (``maskkit tune``) on Optuna: typed search spaces over ``TrainConfig`` fields, trials
that are normal training runs pruned on the engine's validation metric, a study shared through a database.

Optuna is an optional extra (``pip install 'maskkit[tune]'``). Built on :mod:`maskkit.engine`; nothing below
imports this package.
"""

from maskkit.tune.space import CategoricalParam, FloatParam, IntParam, SearchSpace, load_space

__all__ = ["CategoricalParam", "FloatParam", "IntParam", "SearchSpace", "load_space"]
