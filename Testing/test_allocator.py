"""The command line's allocator setting, observed in glibc's own statistics of fresh processes."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform
import subprocess
import sys

import pytest

# How many bytes glibc serves by mmap while a 16 MB block is held, in a fresh process, with or without the setting.
# Each case needs a process of its own: once a mmapped block is freed, glibc raises its own threshold above it.
PROBE = """
import ctypes, ctypes.util, json, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
applied = None
if sys.argv[1] == "set":
    from MedAutoencoderLib.allocator import keep_freed_memory_for_reuse
    applied = keep_freed_memory_for_reuse()
block = libc.malloc(16 << 20)
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd}))
"""


def _has_mallinfo2() -> bool:
    """glibc 2.33 or newer (``mallinfo2``), where the probe can read the statistics."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    return hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")


def _probe(case: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", PROBE, case], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


@pytest.mark.skipif(not _has_mallinfo2(), reason="mallopt and mallinfo2 are glibc's (2.33 or newer)")
def test_blocks_under_32_mb_come_from_the_heap_once_set():
    assert _probe("default")["mmapped"] >= 16 << 20  # glibc's default: a fresh 16 MB block is mmapped
    with_setting = _probe("set")
    assert with_setting["applied"]
    assert with_setting["mmapped"] < 16 << 20  # from the heap now, kept for reuse when freed
