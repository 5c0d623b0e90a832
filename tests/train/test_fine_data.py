"""FineNet's data (train/fine_data.py): the detail stage recovers a known displacement, chips are
deterministic, their targets re-render them, transfer and gain draws, bad settings."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from morphable.errors import InputError
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.mesh import displace
from morphable.nets.fine import base_maps, vertex_displacement
from morphable.train import fine_data as fd
from morphable.train import inverse_rendered as ir
from tests.train._coarse_data import synthetic_fit

PHOTOS = ("p0.png", "p1.png", "p2.png", "p3.png")


def bumps(model, region: torch.Tensor, amplitude: float = 1.0, period_mm: float = 30.0) -> torch.Tensor:
    """``(V_r,)`` a smooth displacement (mm) over the mean face: a checkerboard of bumps."""
    p = model.mean[region]
    return amplitude * torch.sin(2 * math.pi * p[:, 0] / period_mm) * torch.sin(2 * math.pi * p[:, 1] / period_mm)


def stand_in_corpus(tmp_path, monkeypatch, model, offset: float = 0.0):
    """Four synthetic "photos" whose coarse fits are known and whose details are known bumps (amplitude 0.6 to
    1.2 mm, one period per photo) + ``offset`` mm: no detector, no optimisation. Returns the corpus folder."""
    root = tmp_path / "corpus"
    root.mkdir(exist_ok=True)
    fits, details = {}, {}
    for i, name in enumerate(PHOTOS):
        fit, photo = synthetic_fit(model, seed=20 + i)
        Image.fromarray(photo).save(root / name)
        fits[name] = fit
        details[fit["photometric"].item() + i] = offset + bumps(model, fit["region_vertices"], 0.6 + 0.2 * i,
                                                                  24.0 + 4 * i)
        fit["photometric"] = fit["photometric"] + i  # (the detail cache's key; distinct per photo)
    Image.fromarray(photo).save(root / "no-face.png")

    def fake_fit(model, path):
        if path.name not in fits:
            raise InputError(path, "no face found")
        return fits[path.name]

    def fake_detail(model, fit, photo):
        return {"displacement": details[fit["photometric"].item()], "photometric": torch.tensor([0.1, 0.05])}

    monkeypatch.setattr(ir, "fit_photo", fake_fit)
    monkeypatch.setattr(ir, "corpus_root", lambda: root)
    monkeypatch.setattr(fd, "fit_detail", fake_detail)
    return root


def test_detail_stage_recovers_a_known_displacement(sfm):
    """A stand-in photo rendered with bumps of ±1 mm along the normals; :func:`fit_detail`, started from the
    undisplaced face (the right albedo, light and camera), finds a displacement that correlates with the
    bumps on the seen vertices and lowers the colour energy."""
    fit, _ = synthetic_fit(sfm, seed=3, size=256)
    region = fit["region_vertices"]
    truth = bumps(sfm, region)
    verts = sfm(identity=fit["identity"][None], expression=fit["expression"][None]).vertices[:, region]
    camera = ScaledOrthographic(fit["scale"], fit["rotation"][None], fit["translation"][None])
    renderer = ir.Renderer(ir.region_triangles(sfm, region), (256, 256))
    with torch.no_grad():
        out = renderer(displace(verts, renderer.triangles, truth[None]), camera, colors=fit["albedo"][None],
                       sh=fit["light"][None], background=0.5, visibility=True)
    photo = (out.image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    detail = fd.fit_detail(sfm, fit, photo)
    d, seen = detail["displacement"], out.visibility[0]
    r = torch.corrcoef(torch.stack([d[seen], truth[seen]]))[0, 1]
    before, after = detail["photometric"].tolist()
    print(f"correlation {r:.3f}, mean |d| {d[seen].abs().mean():.3f} mm (truth {truth[seen].abs().mean():.3f}), "
          f"colour energy {before:.4f} -> {after:.4f}")
    assert r > 0.5
    assert after < 0.8 * before


def test_chips_are_deterministic_and_their_targets_rerender_them(sfm, tmp_path, monkeypatch):
    root = stand_in_corpus(tmp_path, monkeypatch, sfm)
    data = fd.build_fine_set(sfm, "sfm", PHOTOS + ("no-face.png",), 3, seed=5, cache=tmp_path / "cache",
                             root=root)
    assert data["displacement"].shape == (4, sfm.n_vertices) and len(data["backgrounds"]) == 12
    renderers = fd.FineRenderers(sfm, data["region_vertices"], 96)
    settings, detail = ir.VariantSettings(), fd.DetailSettings()

    def chips(seed):
        draws = fd.draw_fine(sfm, data, torch.arange(12), torch.Generator().manual_seed(seed), settings, detail)
        return draws, fd.render_fine(sfm, renderers, data, draws)

    draws, a = chips(0)
    _, b = chips(0)
    _, c = chips(1)
    for k in ("images", "normals", "mask", "target", "displacement"):
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["images"], c["images"])
    # the true per-vertex displacement, applied to the coarse mesh, renders the chip again (8-bit rounding)
    photo = data["photo"][draws["index"]]
    moved = displace(a["vertices"], renderers.shaded.triangles, a["displacement"])
    background = data["backgrounds"][draws["index"]].float() / 255
    again = renderers.shaded(moved, a["camera"], colors=data["albedo"][photo], sh=draws["light"],
                             background=background).image
    coarse = renderers.shaded(a["vertices"], a["camera"], colors=data["albedo"][photo], sh=draws["light"],
                              background=background).image
    inside = a["mask"]
    assert inside.sum() > 12 * 1000
    err = (again - a["images"]).abs().max(-1).values[inside]
    coarse_err = (coarse - a["images"]).abs().max(-1).values[inside]
    print(f"max colour error: displaced mesh {err.max() * 255:.2f}/255, coarse mesh {coarse_err.max() * 255:.1f}/255")
    assert float(err.max()) < 2.5 / 255 and float(coarse_err.max()) > 10 / 255
    # the target map holds this chip's displacement: read at the seen vertices (the maps' 4 px border aside)
    # it gives the per-vertex truth up to the resolution of bumps 8-12 px across (another photo's bumps or a
    # misplaced map would be off by about |d|; the read-back's alignment: tests/nets/test_fine.py)
    read = vertex_displacement(a["target"], base_maps(renderers.hard, a["vertices"], a["camera"]))
    interior = torch.nn.functional.max_pool2d((~a["mask"]).float()[:, None], 9, 1, 4)[:, 0] == 0
    px = a["points"].round().long().clamp(0, 95)
    deep = a["visible"] & interior[torch.arange(12)[:, None], px[..., 1], px[..., 0]]
    base, fine = fd.detail_errors(read, a["displacement"], deep)
    print(f"target map read at interior vertices: {fine.mean():.4f} mm off, |d| {base.mean():.3f} mm")
    assert float(fine.mean()) < 0.3 * float(base.mean())


def test_displacement_draws(sfm, tmp_path, monkeypatch):
    """Sources: the own photo or another (transfer), gains within their range; the rendered displacement is
    the source's × gain."""
    root = stand_in_corpus(tmp_path, monkeypatch, sfm)
    data = fd.build_fine_set(sfm, "sfm", PHOTOS, 8, seed=5, cache=tmp_path / "cache", root=root)
    g = torch.Generator().manual_seed(0)
    index = torch.arange(32)
    own = fd.draw_fine(sfm, data, index, g, ir.VariantSettings(), fd.DetailSettings(transfer_probability=0.0))
    assert torch.equal(own["source"], data["photo"][index])
    mixed = fd.draw_fine(sfm, data, index, g, ir.VariantSettings(), fd.DetailSettings(0.5, 0.8, 1.2))
    assert 0 < int((mixed["source"] != data["photo"][index]).sum()) < 32
    assert float(mixed["gain"].min()) >= 0.8 and float(mixed["gain"].max()) <= 1.2
    subset = {k: v[:2] if v.dim() else v for k, v in mixed.items()}
    out = fd.render_fine(sfm, fd.FineRenderers(sfm, data["region_vertices"], 96), data, subset)
    torch.testing.assert_close(out["displacement"], subset["gain"][:, None] * data["displacement"][subset["source"]])


def test_bad_settings_and_input(sfm, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="transfer_probability"):
        fd.DetailSettings(transfer_probability=1.5)
    with pytest.raises(ValueError, match="min_gain"):
        fd.DetailSettings(min_gain=2.0, max_gain=1.0)
    root = stand_in_corpus(tmp_path, monkeypatch, sfm)
    with pytest.raises(InputError, match="nope.png: no such photo"):
        fd.build_fine_set(sfm, "sfm", ("nope.png",), 2, seed=0, cache=tmp_path / "cache", root=root)
