"""morphable: 3D face reconstruction with 3D morphable models.

The public entry points are :func:`reconstruct` (photo in, :class:`Reconstruction` out), :func:`load_model`
and :class:`MorphableModel`; see ``docs/architecture.md`` for the package layout and conventions
(millimetres, +y up, +z towards the viewer, standardised coefficients).
"""
from morphable.errors import InputError, ModelFileError, MorphableError
from morphable.models.base import ModelOutput, MorphableModel

__version__ = "0.1.0"


def load_model(name_or_path: str) -> MorphableModel:
    """Load a face model by registry name (``"ict"``, ``"sfm"``, a user-added name) or by file path.

    Named open models are fetched (or taken from ``MORPHABLE_MIRROR``), checked against their sha256 and
    converted once into ``MORPHABLE_HOME``. A path is loaded with the loader its format calls for.
    """
    from morphable.models.registry import load_model as _load

    return _load(name_or_path)


def reconstruct(image, model="ict", **kwargs):
    """Reconstruct the face in a photo: :func:`morphable.reconstruct.reconstruct` (imported on first use,
    so ``import morphable`` stays light)."""
    from morphable.reconstruct import reconstruct as _reconstruct

    return _reconstruct(image, model, **kwargs)


def __getattr__(name: str):
    if name == "Reconstruction":
        from morphable.reconstruct import Reconstruction

        return Reconstruction
    raise AttributeError(f"module 'morphable' has no attribute {name!r}")


__all__ = [
    "Reconstruction",
    "InputError",
    "ModelFileError",
    "ModelOutput",
    "MorphableError",
    "MorphableModel",
    "load_model",
    "reconstruct",
]
