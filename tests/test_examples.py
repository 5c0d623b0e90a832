"""examples/library.py (the README's library section) runs and does what it says."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, data_file


def test_readme_library_section_is_the_example():
    """The README's library block is the script's body between its README markers, word for word."""
    script = (ROOT / "examples" / "library.py").read_text()
    body = script.split("# --- README: library ---")[1].split("\n", 1)[1].split("# --- end of README")[0].strip()
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## The library\n.*?```python\n(.*?)```", readme, re.S).group(1)
    assert body in block


def test_library_example_runs(tmp_path):
    data_file("eos/share/sfm_shape_3448.bin")
    photo = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0002.png")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "library.py"), str(photo), "-o", str(tmp_path / "o"),
                           "--model", "sfm"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rms = float(re.search(r"landmark RMS ([\d.]+) px", done.stdout).group(1))
    assert 0 < rms < 8
    share = int(re.search(r"face covers (\d+)% of the image", done.stdout).group(1))
    assert 5 < share < 90 and "rendered (1, 256, 171, 3)" in done.stdout
    params = json.loads((tmp_path / "o" / "params.json").read_text())
    assert abs(params["rms_px"] - rms) < 0.01 and Path(tmp_path / "o" / "mesh.glb").is_file()
