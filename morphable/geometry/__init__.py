"""Pure tensor maths: rotations, cameras, meshes, alignment, UV flattening."""
