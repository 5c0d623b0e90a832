"""Restricting a model to a vertex subset keeps evaluation and tables consistent."""
import torch

import morphable
from morphable.models.region import restrict


def test_ict_face_region_submodel_matches_full_model():
    model = morphable.load_model("ict")
    face = model.regions["face"]
    sub = restrict(model, face)
    g = torch.Generator().manual_seed(0)
    a, e = torch.randn(2, 100, generator=g), torch.rand(2, model.n_expression, generator=g)
    full = model(identity=a, expression=e).vertices
    torch.testing.assert_close(sub(identity=a, expression=e).vertices, full[:, face])
    # landmarks defined on the face are kept and land on the same points
    both = sub.landmark_mask
    assert both.sum() >= 60
    torch.testing.assert_close(sub.landmarks(sub(identity=a).vertices)[:, both],
                               model.landmarks(model(identity=a).vertices)[:, both])
    assert sub.triangles.max() < sub.n_vertices and len(sub.triangles) > 15000
    if model.symmetry is not None:  # mirrors stay mirrors
        s = sub.symmetry
        ok = s >= 0
        torch.testing.assert_close(sub.mean[ok, 0], -sub.mean[s[ok], 0], atol=0.5, rtol=0)
