"""Files in and out: meshes (OBJ, PLY), images, parameter files. Every write is atomic."""
from morphable.io.atomic import atomic_write
from morphable.io.image import read_image, write_image
from morphable.io.mesh import Mesh, read_mesh, read_obj, read_ply, write_mesh, write_obj, write_ply
from morphable.io.params import read_params, write_params

__all__ = [
    "Mesh", "atomic_write", "read_image", "read_mesh", "read_obj", "read_params", "read_ply",
    "write_image", "write_mesh", "write_obj", "write_params", "write_ply",
]
