"""Visualisation: fit overlays."""
from morphable.viz.overlay import draw_overlay

__all__ = ["draw_overlay"]
