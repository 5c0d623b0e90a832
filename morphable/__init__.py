"""morphable: 3D face reconstruction with 3D morphable models.

The public entry points are :func:`reconstruct` (photo in, :class:`Reconstruction` out), :func:`load_model`
and :class:`MorphableModel`; see ``docs/architecture.md`` for the package layout and conventions
(millimetres, +y up, +z towards the viewer, standardised coefficients).
"""
from morphable.errors import InputError, ModelFileError, MorphableError
from morphable.models.base import ModelOutput, MorphableModel

# imported here (numpy only at import time) so that the name ``morphable.reconstruct`` is the function,
# not the submodule of the same name
from morphable.reconstruct import Reconstruction, reconstruct  # noqa: E402

__version__ = "0.1.0"


def load_model(name_or_path: str) -> MorphableModel:
    """Load a face model by registry name (``"ict"``, ``"sfm"``, a user-added name) or by file path.

    Named open models are fetched (or taken from ``MORPHABLE_MIRROR``), checked against their sha256 and
    converted once into ``MORPHABLE_HOME``. A path is loaded with the loader its format calls for.
    """
    from morphable.models.registry import load_model as _load

    return _load(name_or_path)


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
