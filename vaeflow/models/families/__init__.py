"""Model families: each owns its objective (named loss terms, optimizers, selection score) and the
inference verbs. A family is one file that registers itself with ``registry.FAMILIES``."""

from vaeflow.models.families.base import (
    Family, FamilyOptimizer, Objective, build_model, family_of, get, module_of, unwrap,
)

__all__ = ["Family", "FamilyOptimizer", "Objective", "build_model", "family_of", "get", "module_of", "unwrap"]
