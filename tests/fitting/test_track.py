"""Video tracking (morphable/fitting/track.py) on a synthetic clip rendered with our renderer: a known
identity, a head turning from −15° to +15° yaw with a nod and a changing expression, landmarks with
0.5 px noise, Farnebäck flow computed on the rendered frames."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from morphable.fitting.contour import CONTOUR_IDS
from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.multi import fit_landmarks_multi
from morphable.fitting.track import (FlowField, TrackConfig, clip_identity, face_flow, keyframe_indices,
                                     landmark_box, landmark_jitter, track_landmarks)
from morphable.geometry.camera import ScaledOrthographic
from morphable.render.renderer import Renderer
from tests.fitting._synthetic import angle_error_deg, camera, face_model

N, SIZE, SCALE = 14, 200, 1.0  # frames, image side (px), px per mm


@functools.lru_cache(maxsize=None)
def clip():
    """Frames ``(N, S, S)`` uint8 grey, noisy landmarks ``(N, 68, 2)``, true vertices' projections
    ``(N, V, 2)``, true rotations ``(N, 3, 3)``, identity ``(K,)`` and expressions ``(N, Ke)``."""
    model = face_model()
    g = torch.Generator().manual_seed(3)
    identity = torch.randn(model.n_identity, generator=g, dtype=torch.float64)
    n = torch.arange(N, dtype=torch.float64)
    ypr = torch.stack([-15 + 30 * n / (N - 1), 5 * torch.sin(n / 3), 3 * torch.cos(n / 4)], 1)
    expression = 0.3 + 0.2 * torch.sin(n[:, None] / 2 + torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    cams = camera(ypr, scale=SCALE)
    drift = torch.stack([SIZE / 2 - 13 + 2 * n, SIZE / 2 + 10 + 2 * torch.sin(n / 2)], 1)  # px
    cams = ScaledOrthographic(cams.scale, cams.rotation, drift)
    vertices = model(identity=identity.expand(N, -1), expression=expression).vertices
    mean = model.mean
    colors = (0.5 + 0.35 * torch.sin(mean[:, :1] / 7 + torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
              * torch.cos(mean[:, 1:2] / 6)).expand(N, -1, -1)  # a smooth pattern the flow can follow
    render = Renderer.from_model(model, (SIZE, SIZE), soft_silhouette=False)(vertices, cams, colors=colors)
    grey = (render.image.mean(-1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    projected = cams.project(vertices)
    landmarks = projected[:, model.landmark_indices[:, 0]].clone()
    landmarks += 0.5 * torch.randn(landmarks.shape, generator=g, dtype=torch.float64)
    landmarks[:, list(CONTOUR_IDS)] = float("nan")  # the synthetic model's landmarks are not on its outline
    return grey, landmarks, projected, cams.rotation_matrix, identity, expression


def flows_of(grey, landmarks):
    """``flows[n]``: frame n−1 → n around frame n−1's landmarks (``None`` without them, as the CLI does)."""
    boxes = [landmark_box(points.numpy()) for points in landmarks]
    return [None] + [None if boxes[i - 1] is None else face_flow(grey[i - 1], grey[i], boxes[i - 1])
                     for i in range(1, N)]


def test_face_flow_follows_the_rendered_motion():
    grey, landmarks, projected, *_ = clip()
    errors = []
    for i in (3, 8, 12):
        flow = face_flow(grey[i - 1], grey[i], landmark_box(landmarks[i - 1].numpy()))
        assert isinstance(flow, FlowField) and flow.scale < 1  # a crop shrunk to 128 px
        points = projected[i - 1, face_model().landmark_indices[:, 0]].numpy()  # front vertices, textured
        d, inside = flow.displacement(points)
        truth = (projected[i] - projected[i - 1])[face_model().landmark_indices[:, 0]].numpy()
        assert inside.all()
        errors.append(np.linalg.norm(d - truth, axis=1))
    motion = np.linalg.norm(truth, axis=1).mean()
    assert motion > 1.5  # the head moves a few px per frame
    assert np.median(np.concatenate(errors)) < 0.35 * motion


def test_track_recovers_one_identity_and_smooth_poses():
    model = face_model()
    grey, landmarks, _, R_true, identity, _ = clip()
    keys = keyframe_indices([True] * N, 6)
    ident, cov = clip_identity(model, landmarks[keys])
    single = fit_landmarks(model, landmarks)  # per-frame independent fits
    # E_same: the fused posteriors give the joint MAP of one identity over the keyframes (the multi-view fit)
    joint = fit_landmarks_multi(model, landmarks[keys]).identity[0]
    assert (ident - joint).norm() < 0.05 * (single.identity[keys] - joint).norm(dim=1).min()
    err_clip, err_single = (ident - identity).norm(), (single.identity - identity).norm(dim=1)
    assert err_clip < err_single.min(), (err_clip, err_single)
    assert torch.corrcoef(torch.stack([ident, identity]))[0, 1] > 0.8
    tr = track_landmarks(model, landmarks, ident, flows=flows_of(grey, landmarks), identity_covariance=cov)
    assert tr.held == () and (tr.flow_used[1:] > 20).all() and tr.flow_used[0] == 0
    assert torch.equal(tr.identity, ident)
    err = angle_error_deg(tr.camera.rotation_matrix, R_true)
    assert err.max() < 3.0, err
    # smoother than independent fits: rotation and fitted landmarks have smaller second differences
    def accel(R):  # (N,) degrees of R_{n+1} vs the constant-velocity prediction from n−1, n
        pred = R[1:-1] @ R[:-2].transpose(1, 2) @ R[1:-1]
        return angle_error_deg(R[2:], pred)

    assert accel(tr.camera.rotation_matrix).mean() < 0.6 * accel(single.camera.rotation_matrix).mean()
    assert landmark_jitter(tr.landmarks_fitted) < 0.8 * landmark_jitter(single.landmarks_fitted)
    assert np.nanmax(tr.rms_px.numpy()) < 2.0


def test_frame_without_face_is_held_from_its_neighbours():
    model = face_model()
    grey, landmarks, _, R_true, identity, _ = clip()
    landmarks = landmarks.clone()
    landmarks[6] = float("nan")
    flows = flows_of(grey, landmarks)
    assert flows[7] is None  # no box to crop around after the missing frame
    config = TrackConfig(flow_weight=0.0)
    tr = track_landmarks(model, landmarks, identity, flows=flows, config=config)
    assert tr.held == (6,)
    assert torch.isnan(tr.rms_px[6]) and torch.isfinite(tr.rms_px[[5, 7]]).all()
    err = angle_error_deg(tr.camera.rotation_matrix, R_true)
    assert err[6] < 2.5, err
    # the held pose lies between its neighbours' (geodesic interpolation)
    a = angle_error_deg(tr.camera.rotation_matrix[5:6], tr.camera.rotation_matrix[6:7])
    b = angle_error_deg(tr.camera.rotation_matrix[6:7], tr.camera.rotation_matrix[7:8])
    whole = angle_error_deg(tr.camera.rotation_matrix[5:6], tr.camera.rotation_matrix[7:8])
    assert torch.allclose(a + b, whole, atol=1e-6) and torch.allclose(a, b, atol=1e-6)
    landmarks[:] = float("nan")
    with pytest.raises(ValueError, match="no frame"):
        track_landmarks(model, landmarks, identity)


def test_face_follower_tracks_the_box_and_matches_full_detection():
    """On the corpus's video: after the first frame the follower finds the face in a small region around
    the previous landmarks (no full detection) and its landmarks are dlib's on the whole frame; a blank
    frame is no face, and the next frame is detected afresh."""
    import imageio.v2 as imageio
    from PIL import Image

    from morphable.detect.dlib68 import detect_landmarks
    from morphable.fitting.track import FaceFollower
    from tests.conftest import data_file

    reader = imageio.get_reader(data_file("3DDFA/demo@obama/obama.mp4"), "ffmpeg")
    frames = [np.asarray(Image.fromarray(f).resize((480, 270), Image.BILINEAR)) for _, f in zip(range(4), reader)]
    reader.close()
    follower = FaceFollower("hog")
    sources = []
    for frame in frames:
        points, source = follower(frame)
        sources.append(source)
        full = detect_landmarks(frame, detector="hog")[0].landmarks
        assert np.abs(points - full).mean() < 1.0  # the same predictor in nearly the same box
    assert sources == ["dlib-hog", "tracked", "tracked", "tracked"] and follower.full_detections == 1
    assert follower(np.zeros_like(frames[0])) == (None, "none") and follower.full_detections == 2
    assert follower(frames[0])[1] == "dlib-hog"
