"""Render-and-recover pieces: scan loading and landmark mapping, NoW scoring of model meshes, the 3D oracle,
and the benchmarks' OpenGL renderer (projection and shading against the camera maths)."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from morphable.errors import InputError
from morphable.eval.now import NOW_LANDMARKS_IBUG68
from morphable.eval.scan_recover import (Scan, fit_identity_to_scan, load_scan, mesh_now_landmarks, now_landmarks_from,
                                         scan_from_model, score_identity, scored_model)
from morphable.geometry.align import Similarity
from morphable.geometry.camera import Perspective
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel
from tests.conftest import REQUIRE_DATA, ROOT
from tests.eval.conftest import face_patch


def _patch_model(n=30):
    """A face-like height field as a linear model: 5 smooth identity modes (Gaussian bumps of a few mm along
    the surface normal over the nose, brows, cheeks, chin and mouth; a displacement *along* a flat surface
    would be invisible to any surface distance), NoW landmarks as vertex landmarks."""
    vertices, triangles, ids = face_patch(n=n)
    x, y = vertices[:, 0], vertices[:, 1]
    bump = lambda cx, cy, s: np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s ** 2))  # noqa: E731
    basis = np.zeros((len(vertices), 3, 5))
    basis[:, 2, 0] = 4 * bump(0, -5, 12)                      # nose height
    basis[:, 2, 1] = 3 * (bump(-30, 25, 10) + bump(30, 25, 10))  # brows
    basis[:, 2, 2] = 3 * (bump(-35, -15, 15) - bump(35, -15, 15))  # asymmetric cheeks
    basis[:, 2, 3] = 3 * bump(0, -50, 12)                     # chin
    basis[:, 2, 4] = -2 * bump(0, -35, 8)                     # mouth
    lm_ids = np.zeros((68, 3), np.int64)
    mask = np.zeros(68, bool)
    lm_ids[list(NOW_LANDMARKS_IBUG68), 0] = ids
    mask[list(NOW_LANDMARKS_IBUG68)] = True
    weights = np.tile([1.0, 0.0, 0.0], (68, 1))
    return MorphableModel(name="patch", mean=vertices, triangles=triangles, identity_basis=basis,
                          landmark_indices=lm_ids, landmark_weights=weights, landmark_mask=mask, dtype=torch.float64)


TRUE_IDENTITY = torch.tensor([[1.2, -0.8, 0.6, 1.0, -0.7]], dtype=torch.float64)


def test_model_mesh_against_itself_scores_zero():
    model = _patch_model()
    assert scored_model(model) is model                        # no ICT regions: scored whole
    truth = scan_from_model(model, TRUE_IDENTITY)
    own = score_identity(truth, model, TRUE_IDENTITY)
    mean = score_identity(truth, model, None)
    assert own.median_mm < 1e-6 and own.mean_mm < 1e-6
    assert mean.median_mm > 0.3                                # the mean face is measurably different


def test_oracle_recovers_known_identity_under_a_rigid_motion():
    model = _patch_model()
    truth = scan_from_model(model, TRUE_IDENTITY)
    motion = Similarity(1.0, axis_angle_to_matrix(torch.tensor([0.05, -0.08, 0.03], dtype=torch.float64)).numpy(),
                        np.array([4.0, -3.0, 6.0]))
    scan = Scan(motion.apply(truth.vertices), truth.triangles, motion.apply(truth.landmarks))
    fit = fit_identity_to_scan(model, scan, iterations=5, lambda_identity=1e-4)
    np.testing.assert_allclose(fit.identity.numpy(), TRUE_IDENTITY[0].numpy(), atol=0.02)
    np.testing.assert_allclose(fit.transform.rotation, motion.rotation, atol=1e-3)
    np.testing.assert_allclose(fit.transform.translation, motion.translation, atol=0.1)
    assert fit.rms_mm[-1] < 0.01 < fit.rms_mm[0]
    assert score_identity(scan, model, fit.identity).median_mm < 0.01


def test_mesh_landmarks_follow_the_model_definitions():
    model = _patch_model()
    vertices = model.mean.numpy() + 1.0
    np.testing.assert_array_equal(mesh_now_landmarks(model, vertices),
                                  vertices[model.landmark_indices[list(NOW_LANDMARKS_IBUG68), 0].numpy()])


def test_now_landmarks_from_51_68_and_7_points_agree():
    points68 = np.random.default_rng(0).normal(size=(68, 3))
    seven = points68[list(NOW_LANDMARKS_IBUG68)]
    np.testing.assert_array_equal(now_landmarks_from(points68), seven)
    np.testing.assert_array_equal(now_landmarks_from(points68[17:]), seven)      # FLAME/iBUG-51: iBUG 17..67
    np.testing.assert_array_equal(now_landmarks_from(seven), seven)
    with pytest.raises(InputError, match="7 \\(NoW\\), 51"):
        now_landmarks_from(points68[:10], "lm.txt")


def test_load_real_scan_in_mm(data):
    scan_path, lm_path = data("flame-fitting/data/scan.obj"), data("flame-fitting/data/scan_lmks.npy")
    scan = load_scan(scan_path, lm_path, unit="m")
    np.testing.assert_allclose(scan.landmarks, np.load(lm_path)[[i - 17 for i in NOW_LANDMARKS_IBUG68]] * 1000)
    assert 150 < np.ptp(scan.vertices[:, 0]) < 400                    # a head, in mm
    assert 5000 < len(scan.crop_ids) < len(scan.vertices)


def test_flame_embedding_landmarks_match_the_scans_annotation(data):
    """The scan registered to FLAME's topology, its landmarks placed by FLAME's static embedding, against the
    scan's own annotated landmarks (another frame: compared after a similarity fit): the 7 NoW points agree
    to a few mm (annotation vs embedding); a left/right mix-up of the eye corners would not."""
    from morphable.eval.scan_recover import load_flame_mesh_scan
    from morphable.geometry.align import umeyama

    registered = load_flame_mesh_scan(data("TF_FLAME/data/registered_mesh.ply"),
                                      data("TF_FLAME/data/flame_static_embedding.pkl"))
    scan = load_scan(data("flame-fitting/data/scan.obj"), data("flame-fitting/data/scan_lmks.npy"))
    assert registered.vertices.shape == (5023, 3) and 150 < np.ptp(registered.vertices[:, 0]) < 400  # mm
    assert len(registered.crop_ids) > 2000
    def residual(points):
        fit = umeyama(points, scan.landmarks)
        return np.linalg.norm(fit.apply(points) - scan.landmarks, axis=1)
    assert residual(registered.landmarks).max() < 10.0
    assert residual(registered.landmarks[[1, 0, 2, 3, 4, 6, 5]]).max() > 20.0


def test_flame_mesh_scan_errors_name_the_file(data, tmp_path):
    from morphable.eval.scan_recover import load_flame_mesh_scan
    from morphable.io.safe_pickle import load_pickle

    import pickle
    emb = load_pickle(data("TF_FLAME/data/flame_static_embedding.pkl"))
    bad = tmp_path / "embedding.pkl"
    bad.write_bytes(pickle.dumps({"lmk_face_idx": np.asarray(emb["lmk_face_idx"]) + 100000,
                                  "lmk_b_coords": np.asarray(emb["lmk_b_coords"])}))
    with pytest.raises(InputError, match="embedding.pkl.*triangle ids"):
        load_flame_mesh_scan(data("TF_FLAME/data/template.ply"), bad)


def test_load_scan_errors_name_the_file(tmp_path):
    vertices, triangles, ids = face_patch(n=20)
    obj = tmp_path / "patch.obj"
    obj.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in vertices / 1000)
                   + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in triangles))
    np.save(tmp_path / "m.npy", vertices[ids] / 1000)
    assert len(load_scan(obj, tmp_path / "m.npy", unit="m").crop_ids) > 100
    np.save(tmp_path / "mm.npy", vertices[ids])                      # landmarks in mm, read as metres
    with pytest.raises(InputError, match="mm.npy.*NoW crop"):
        load_scan(obj, tmp_path / "mm.npy", unit="m")
    (tmp_path / "bad.txt").write_text("1 2 3\n4 5 6\n7 8 9\n")
    with pytest.raises(InputError, match="bad.txt"):
        load_scan(obj, tmp_path / "bad.txt")


# ---------------------------------------------------------------------------------------------------
# the benchmarks' moderngl renderer


def _gl_module():
    spec = importlib.util.spec_from_file_location("bench_gl", ROOT / "benchmarks" / "_gl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                            # its dataclass looks itself up there
    spec.loader.exec_module(module)
    reason = module.gl_available()
    if reason is not None:
        if REQUIRE_DATA:
            pytest.fail(reason)
        pytest.skip(reason)
    return module


def test_gl_render_puts_points_at_their_projection():
    """Small fronto-parallel squares (in the camera frame) at known points; the centroid of each rendered
    blob must be the point's projection by :class:`Perspective` (an off-centre principal point and a
    non-square image catch axis, flip and half-pixel mistakes). Flat light: pixel = diffuse · albedo."""
    gl = _gl_module()
    size = (160, 120)
    rotation = axis_angle_to_matrix(torch.tensor([0.1, 0.5, -0.2], dtype=torch.float64)).numpy()
    camera = gl.PinholeCamera(300.0, np.array([83.3, 54.6]), rotation, np.array([5.0, -8.0, -480.0]))
    centres_cam = np.array([[0.0, 0.0, -500.0], [-60.0, 35.0, -520.0], [70.0, -40.0, -450.0], [33.3, 21.7, -610.0]])
    half = 3.0
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]]) * half
    pts_cam = (centres_cam[:, None] + corners[None]).reshape(-1, 3)
    vertices = (pts_cam - camera.translation) @ rotation           # model frame: R^T (X_c - t)
    q = 4 * np.arange(len(centres_cam))[:, None]
    triangles = np.concatenate([q + [0, 1, 2], q + [0, 2, 3]])
    image = gl.render(vertices, triangles, (1.0, 1.0, 1.0), camera, size, light_dir=(0, 0, 1), ambient=0.0,
                      diffuse=0.5, background=(0, 0, 0), gamma=1.0, supersample=8).astype(np.float64)
    assert image.shape == (120, 160, 3)
    cam = Perspective(torch.tensor([camera.focal]), torch.as_tensor(camera.principal_point)[None],
                      matrix_to_axis_angle(torch.as_tensor(rotation))[None], torch.as_tensor(camera.translation)[None])
    centres_model = (centres_cam - camera.translation) @ rotation
    expected = cam.project(torch.as_tensor(centres_model)[None])[0].numpy()
    rows, cols = np.mgrid[0:120, 0:160]
    for point in expected:
        near = (np.abs(cols - point[0]) < 6) & (np.abs(rows - point[1]) < 6)
        w = image[..., 0] * near
        found = np.array([(w * cols).sum() / w.sum(), (w * rows).sum() / w.sum()])
        np.testing.assert_allclose(found, point, atol=0.05)
        inside = image[int(round(point[1])), int(round(point[0]))]
        np.testing.assert_allclose(inside, 0.5 * 255, atol=1.0)      # Lambert: n = l, ρ = 1, diffuse 0.5
    assert image[0, 0].max() == 0.0
