"""The recipe registry: recipe name -> ``"module:Class"``, imported only when asked for.

``MORPHABLE_EXTRA_RECIPES`` adds recipes from outside the package without editing this file, e.g. for
tests or experiments: a comma-separated list of ``name=module:Class`` (the module must be importable, e.g.
on ``PYTHONPATH``). Entries there override built-in names.
"""
from __future__ import annotations

import importlib
import os

from morphable.errors import MorphableError
from morphable.train.recipes.base import Recipe

# name -> "module:Class"
RECIPES: dict[str, str] = {
    "coarse": "morphable.train.recipes.coarse:CoarseRecipe",
    "fine": "morphable.train.recipes.fine:FineRecipe",
    "genova": "morphable.train.recipes.genova:GenovaRecipe",
    "ringnet": "morphable.train.recipes.ringnet:RingNetRecipe",
    "sir": "morphable.train.recipes.sir:SIRRecipe",
    "stn": "morphable.train.recipes.stn:STNRecipe",
}


class UnknownRecipeError(MorphableError):
    """No recipe of that name, or its target is not a Recipe subclass."""


def register(name: str, target: str | type[Recipe]) -> None:
    """Add (or replace) the recipe ``name``: a ``"module:Class"`` string, or the class itself."""
    if isinstance(target, str):
        if ":" not in target:
            raise ValueError(f"register: target must be 'module:Class', got {target!r}")
        RECIPES[name] = target
    else:
        RECIPES[name] = f"{target.__module__}:{target.__qualname__}"


def _extra_recipes() -> dict[str, str]:
    spec = os.environ.get("MORPHABLE_EXTRA_RECIPES", "")
    out = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, target = entry.partition("=")
        if not sep or ":" not in target:
            raise UnknownRecipeError(f"MORPHABLE_EXTRA_RECIPES: expected name=module:Class, got {entry!r}")
        out[name.strip()] = target.strip()
    return out


def known_recipes() -> dict[str, str]:
    """Every recipe name -> target: the built-in ones, registered ones, and ``MORPHABLE_EXTRA_RECIPES``."""
    return {**RECIPES, **_extra_recipes()}


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as ``name`` (its module is imported now).

    Raises:
        UnknownRecipeError: no such name (the message lists the known ones), or the target is not a
            :class:`Recipe` subclass.
    """
    table = known_recipes()
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise UnknownRecipeError(f"unknown recipe {name!r} (known: {known})")
    module, _, attr = table[name].partition(":")
    cls = importlib.import_module(module)
    for part in attr.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, Recipe)):
        raise UnknownRecipeError(f"recipe {name!r}: {table[name]} is not a Recipe subclass")
    return cls
