"""Photometric inverse rendering: the linear light solve, the symmetric albedo modes, and the full fit on
synthetic faces with known geometry, albedo and light (ICT face region)."""
import numpy as np
import pytest
import torch

import morphable
from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.photometric import (ModeSpacePriors, PhotometricConfig, Stage, fit_photometric, region_terms,
                                           solve_albedo_modes, solve_light, symmetric_harmonics)
from morphable.losses.smoothness import laplacian_loss
from morphable.losses.symmetry import vertex_symmetry_loss
from morphable.geometry.align import umeyama
from morphable.models.region import restrict
from morphable.render.shading import sh_basis
from morphable.train.synthetic import random_light, synthetic_face


@pytest.fixture(scope="module")
def face_model():
    model = morphable.load_model("ict")
    return restrict(model, model.regions["face"], name="ict_face")


def aligned_error(fitted, truth) -> float:
    f, t = fitted.detach().double().numpy(), truth.detach().double().numpy()
    return float(np.linalg.norm(umeyama(f, t).apply(f) - t, axis=1).mean())


def test_solve_light_recovers_a_known_light_exactly():
    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(1, 500, 3, generator=g, dtype=torch.float64), dim=-1)
    albedo = 0.3 + 0.6 * torch.rand(1, 500, 3, generator=g, dtype=torch.float64)
    light = random_light(np.random.default_rng(1)).double()
    colors = albedo * (sh_basis(n) @ light)
    est = solve_light(n, albedo, colors, torch.ones(1, 500, dtype=torch.float64), ridge=1e-9)
    torch.testing.assert_close(est, light, atol=1e-6, rtol=0)


def test_solve_albedo_modes_recovers_known_coefficients():
    """Colours made from ρ_v (1 + U c) s with known c, per image and shared; invisible rows carry no weight."""
    g = torch.Generator().manual_seed(0)
    V, K = 400, 6
    U = torch.randn(V, K, generator=g, dtype=torch.float64)
    base = 0.4 + 0.5 * torch.rand(2, V, 3, generator=g, dtype=torch.float64)
    shading = 0.5 + torch.rand(2, V, 3, generator=g, dtype=torch.float64)
    c = 0.1 * torch.randn(2, K, 3, generator=g, dtype=torch.float64)
    weights = (torch.rand(2, V, generator=g, dtype=torch.float64) > 0.3).double()
    colors = base * shading * (1 + U @ c)
    colors = torch.where(weights[..., None] > 0, colors, torch.rand_like(colors))  # garbage where unseen
    est = solve_albedo_modes(colors, weights, shading, base, U, ridge=1e-12)
    torch.testing.assert_close(est, c, atol=1e-8, rtol=0)
    shared_colors = base * shading * (1 + U @ c[:1])
    est = solve_albedo_modes(shared_colors, weights, shading, base, U, shared=True, ridge=1e-12)
    assert est.shape == (1, K, 3)
    torch.testing.assert_close(est, c[:1], atol=1e-8, rtol=0)


def test_albedo_modes_are_symmetric_smooth_and_unit_rms(face_model):
    terms = region_terms(face_model, None, 32)
    U, mirror = terms.harmonics.double(), terms.mirror
    assert U.shape == (face_model.n_vertices, 32)
    paired = mirror >= 0
    torch.testing.assert_close(U[paired], U[mirror[paired]], atol=1e-9, rtol=0)
    torch.testing.assert_close(U.pow(2).mean(0), torch.ones(32, dtype=torch.float64))
    # smooth: neighbouring vertices differ far less than the function's range (Laplacian energy per mode)
    rough = ((terms.laplacian.to(torch.float64) @ U) ** 2).mean(0)
    assert rough.max() < 0.05 and (rough[:4].mean() < rough[-4:].mean())
    assert region_terms(face_model, None, 32) is terms  # cached


def test_albedo_modes_are_the_same_on_every_build(face_model):
    """The modes come from ARPACK, whose default start vector is random: built again (the second ARPACK call
    of this process, another random start) they are bit-identical, signs included, so fits reproduce."""
    terms = region_terms(face_model, None, 32)
    m = terms.model
    again = symmetric_harmonics(m.mean, m.triangles, terms.mirror, 32)
    assert torch.equal(again, terms.harmonics)


@pytest.mark.parametrize("batch", [1, 2])
def test_mode_space_priors_equal_the_per_vertex_losses(face_model, batch):
    """The smoothness and symmetry priors of ρ_v ⊙ (1 + U c) as quadratic forms in c: the same values and
    gradients as the per-vertex losses, for an asymmetric, rough ρ_v (the photo-initialised factor)."""
    terms = region_terms(face_model, None, 32)
    g = torch.Generator().manual_seed(batch)
    V = face_model.n_vertices
    base = 0.3 + 0.6 * torch.rand(batch, V, 3, generator=g, dtype=torch.float64)
    modes = (0.2 * torch.randn(batch, 32, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    U, lap = terms.harmonics.double(), terms.laplacian.to(torch.float64)
    priors = ModeSpacePriors.build(base, U, lap, terms.mirror)
    smooth, sym = priors(modes)
    rho = base * (1 + U @ modes)
    ref_smooth, ref_sym = laplacian_loss(rho, lap) / V, vertex_symmetry_loss(rho, terms.mirror)
    assert ref_smooth.item() > 0.1 and ref_sym.item() > 0.01
    torch.testing.assert_close(smooth, ref_smooth, rtol=1e-10, atol=0)
    torch.testing.assert_close(sym, ref_sym, rtol=1e-10, atol=0)
    for got, ref in ((smooth, ref_smooth), (sym, ref_sym)):
        torch.testing.assert_close(torch.autograd.grad(got, modes, retain_graph=True)[0],
                                   torch.autograd.grad(ref, modes, retain_graph=True)[0],
                                   rtol=1e-9, atol=1e-12)


def test_photometric_fit_beats_the_landmark_fit_and_recovers_albedo_and_light(face_model):
    rng = np.random.default_rng(3)
    errors = []
    for _ in range(2):
        face = synthetic_face(face_model, rng)
        sparse = fit_landmarks(face_model, face.landmarks, contour=False)
        fit = fit_photometric(face_model, face.image, face.landmarks, init=sparse, config=PhotometricConfig(region=None))
        e_sparse, e_photo = aligned_error(sparse.vertices[0], face.vertices[0]), aligned_error(fit.vertices[0], face.vertices[0])
        errors.append((e_sparse, e_photo))
        assert fit.energies["photometric"] < fit.energies["initial"]["photometric"]
        # albedo up to a per-channel scale, light through the shading it produces (the scale ambiguity)
        visible = fit.alpha.new_zeros(face_model.n_vertices, dtype=torch.bool)
        proj = face.camera.project(face.vertices)[0].round().long()
        inside = (proj >= 0).all(1) & (proj < 224).all(1)
        visible[inside] = fit.alpha[0, proj[inside, 1], proj[inside, 0]] > 0.99
        a_fit, a_true = fit.albedo[0][visible], face.albedo[0][visible]
        k = (a_fit * a_true).sum(0) / (a_fit * a_fit).sum(0)
        assert ((k * a_fit - a_true).norm() / a_true.norm()) < 0.15
        assert ((k - k.mean()).abs() < 0.15 * k.mean()).all()  # one common scale: the colour balance is right
    print("sparse vs photometric vertex error (mm):", errors)
    mean_sparse, mean_photo = np.mean([e[0] for e in errors]), np.mean([e[1] for e in errors])
    assert mean_photo < 0.8 * mean_sparse


def test_shared_identity_over_several_photos(face_model):
    rng = np.random.default_rng(5)
    identity = torch.as_tensor(rng.normal(size=(1, face_model.n_identity)), dtype=torch.float32)
    faces = [synthetic_face(face_model, rng, identity=identity) for _ in range(2)]
    images = torch.cat([f.image for f in faces])
    landmarks = torch.cat([f.landmarks for f in faces])
    sparse = fit_landmarks(face_model, landmarks, contour=False)
    config = PhotometricConfig(region=None, schedule=(Stage(64, 10, ("pose", "light")),
                                                       Stage(96, 25, ("pose", "shape", "light", "albedo_lowfreq"))))
    fit = fit_photometric(face_model, images, landmarks, init=sparse, config=config, shared_identity=True)
    torch.testing.assert_close(fit.identity[0], fit.identity[1])
    assert fit.light.shape == (2, 9, 3) and not torch.equal(fit.light[0], fit.light[1])
    assert fit.energies["photometric"] < fit.energies["initial"]["photometric"]
    with pytest.raises(ValueError, match="unknown variable group"):
        fit_photometric(face_model, images, landmarks, init=sparse,
                        config=PhotometricConfig(region=None, schedule=(Stage(64, 1, ("lights",)),)))


def test_identity_feature_term_is_optimised(face_model):
    """With Genova's identity loss switched on (and dominant), the fit lowers it."""
    rng = np.random.default_rng(7)
    face = synthetic_face(face_model, rng)
    sparse = fit_landmarks(face_model, face.landmarks, contour=False)
    config = PhotometricConfig(region=None, w_identity_feature=1.0, tolerance=0.0,
                               schedule=(Stage(112, 6, ("shape",)),))
    fit = fit_photometric(face_model, face.image, face.landmarks, init=sparse, config=config)
    values = [h["identity_feature"] for h in fit.history]
    assert len(values) == 6 and all(np.isfinite(values))
    assert values[-1] < values[0]
