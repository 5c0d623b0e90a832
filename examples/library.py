"""The README's library section, as a script that CI runs (tests/test_examples.py).

    python examples/library.py [PHOTO] [-o OUT] [--model NAME]

Without PHOTO it reconstructs scikit-image's astronaut photo.
"""
import argparse

import torch

import morphable
from morphable.fitting import fit_landmarks
from morphable.render import Renderer, sh_directional

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("photo", nargs="?", default=None)
parser.add_argument("-o", "--output", default="out/library")
parser.add_argument("--model", default="ict")
args = parser.parse_args()
if args.photo is None:
    from skimage import data

    args.photo = data.astronaut()  # a path works the same way
photo, model_name, output = args.photo, args.model, args.output

# --- README: library ---------------------------------------------------------------------------------
r = morphable.reconstruct(photo, model_name)  # detect (largest face) -> fit -> texture
r.save(output)                               # mesh.obj + texture.png, mesh.glb, params.json, overlay, report
print(f"landmark RMS {r.rms_px:.2f} px; head pose {r.euler_degrees}")

# the pieces underneath, on the same face
model = morphable.load_model(model_name)                          # "ict", "sfm", or a .mat/.h5/.pkl/.npz path
landmarks = torch.as_tensor(r.landmarks, dtype=torch.float32)[None]   # (1, 68, 2) px, from r or your detector
fit = fit_landmarks(model, landmarks)                             # fit.camera, fit.vertices (1, V, 3) mm
H, W = r.image_size
f = 256 / max(H, W)                                               # render at 256 px on the longer side:
camera = fit.camera.rescaled(f)                                   # the same view in the smaller image
light = sh_directional(torch.tensor([[0.3, 0.4, 1.0]]), torch.full((1, 3), 2.0), ambient=0.35)
out = Renderer.from_model(model, (round(H * f), round(W * f)))(fit.vertices, camera,
                                                                 colors=torch.full_like(fit.vertices, 0.7), sh=light)
print(f"rendered {tuple(out.image.shape)}; face covers {(out.alpha > 0.5).float().mean():.0%} of the image")
# --- end of README ---------------------------------------------------------------------------------------
