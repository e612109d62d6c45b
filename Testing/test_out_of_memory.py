"""Running out of memory gives one clear line, not a traceback from deep inside numpy, ITK or torch.

The memory is really exhausted: a fresh process limits its own address space (``RLIMIT_AS``) to what it uses
after its imports plus a headroom, then runs ``detect`` on a 72 MB volume.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import SimpleITK as sitk

from MedAutoencoderLib.synthetic import load_template

PROBE = """
import resource, sys
from MedAutoencoderLib import cli
import MedAutoencoderLib.api, torch  # the imports first: only the detection runs under the limit
with open("/proc/self/status") as status:
    size = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
limit = size + (int(sys.argv[1]) << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(cli.main(["detect", sys.argv[2], "--output-dir", sys.argv[3], "--device", "cpu", "--progress", "none"]))
"""


@pytest.fixture(scope="module")
def large_volume(tmp_path_factory):
    template = load_template()
    image = sitk.Resample(template, [300, 300, 200], sitk.Transform(), sitk.sitkLinear, template.GetOrigin(),
                          (0.65, 0.78, 0.95), template.GetDirection(), 0.0, sitk.sitkFloat32)
    path = tmp_path_factory.mktemp("large") / "large.nii"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
@pytest.mark.parametrize("headroom_mb, message", [
    (40, "large.nii: not enough memory to read it; close other programs"),  # ITK's image buffer
    (150, "large.nii: not enough memory to read it; close other programs"),  # the NIfTI library's own buffer
    (500, "error: this machine ran out of memory during detect; close other programs"),  # numpy or ITK, later
])
def test_running_out_of_memory_is_one_clear_line(tmp_path, large_volume, headroom_mb, message):
    completed = subprocess.run([sys.executable, "-c", PROBE, str(headroom_mb), str(large_volume),
                                str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert message in completed.stderr and "Traceback" not in completed.stderr, completed.stderr[-2000:]
