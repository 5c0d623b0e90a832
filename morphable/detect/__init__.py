"""Faces and 2D landmarks in photos: dlib's 68-point detector and the landmark file formats."""
from morphable.detect.dlib68 import Detection, detect_landmarks
from morphable.detect.formats import read_landmarks, write_landmarks_json, write_pts

__all__ = ["Detection", "detect_landmarks", "read_landmarks", "write_landmarks_json", "write_pts"]
