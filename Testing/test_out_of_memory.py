"""Running out of memory gives one clear line, not a traceback from deep inside numpy, ITK or torch.

The memory is really exhausted: a fresh process limits its own address space (``RLIMIT_AS``) to what it uses
after its imports plus a headroom, then runs ``detect`` on a 72 MB volume (with ``--keep-going``, a small one after it).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import SimpleITK as sitk
from conftest import brain_scans

from MedAutoencoderLib.data.template import load_template

PROBE = """
import resource, sys
from MedAutoencoderLib.cli import commands as cli
import MedAutoencoderLib.api, torch  # the imports first: only the detection runs under the limit
with open("/proc/self/status") as status:
    size = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
limit = size + (int(sys.argv[1]) << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(cli.main(["detect", *sys.argv[2:], "--device", "cpu", "--progress", "none"]))
"""

pytestmark = pytest.mark.slow  # every test starts a process with a memory limit

# RLIMIT_AS counts address space, not memory: glibc reserves 64 MB of it for the malloc arena of each thread that
# allocates, so how many writer threads happened to be started would decide where the limit strikes (a small
# volume after a large one failed to start a thread in 1 of 9 runs); with one arena the limit counts what is used.
PROBE_ENV = {**os.environ, "MALLOC_ARENA_MAX": "1"}


def template_volume(folder, name: str, size, spacing):
    """The MNI template resampled onto a grid of ``size`` voxels of ``spacing`` mm, as uncompressed NIfTI."""
    template = load_template()
    image = sitk.Resample(template, size, sitk.Transform(), sitk.sitkLinear, template.GetOrigin(), spacing,
                          template.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(image, str(folder / name))
    return folder / name


@pytest.fixture(scope="module")
def large_volume(tmp_path_factory):
    return template_volume(tmp_path_factory.mktemp("large"), "large.nii", [300, 300, 200], (0.65, 0.78, 0.95))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
@pytest.mark.parametrize("headroom_mb, message", [
    (40, "large.nii: not enough memory to read it; close other programs"),  # ITK's image buffer
    (150, "large.nii: not enough memory to read it; close other programs"),  # the NIfTI library's own buffer
    # later: detection, which since its brain mask moved onto the model grid fits in 500 MB (200-450 MB fail here)
    (300, "large.nii: this machine ran out of memory detecting anomalies in it; close other programs"),
])
def test_running_out_of_memory_is_one_clear_line(tmp_path, large_volume, headroom_mb, message):
    completed = subprocess.run([sys.executable, "-c", PROBE, str(headroom_mb), str(large_volume), "--output-dir",
                                str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                               env=PROBE_ENV)
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert message in completed.stderr and "Traceback" not in completed.stderr, completed.stderr[-2000:]


@pytest.fixture(scope="module")
def small_volume(tmp_path_factory):
    return brain_scans(tmp_path_factory.mktemp("small"), ["small"], ".nii") / "small.nii"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_keep_going_skips_a_volume_too_large_for_the_memory_and_detects_the_next(tmp_path, large_volume,
                                                                                 small_volume):
    out = tmp_path / "out"
    # 400 MB: the large volume runs out (up to 450 MB here), the small one fits (from 350 MB)
    completed = subprocess.run([sys.executable, "-c", PROBE, "400", str(large_volume), str(small_volume),
                                "--output-dir", str(out), "--keep-going"], capture_output=True, text=True, timeout=300,
                               env=PROBE_ENV)
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-2000:]
    assert "1 of 2 volumes failed (the other 1 have their outputs)" in completed.stderr
    assert "large.nii: this machine ran out of memory detecting anomalies in it" in completed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["small_anomaly_map.nii", "small_anomaly_mask.nii",
                                                     "small_reconstruction.nii", "small_summary.json"]


THREAD_PROBE = """
import resource, threading
from MedAutoencoderLib.errors import is_out_of_memory
with open("/proc/self/status") as status:
    size = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 20), size + (1 << 20)))  # no room for a thread's stack
try:
    threading.Thread(target=print).start()
except RuntimeError as exc:
    print(is_out_of_memory(exc), exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_no_memory_for_a_new_thread_is_running_out_of_memory():
    """Said as the machine's memory running out (with its advice), not as a defect of MedAutoencoder."""
    completed = subprocess.run([sys.executable, "-c", THREAD_PROBE], capture_output=True, text=True, timeout=60)
    assert completed.stdout.startswith("True can't start new thread"), completed.stdout + completed.stderr
