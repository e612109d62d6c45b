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
    from MedAutoencoderLib.runtime.allocator import keep_freed_memory_for_reuse
    applied = keep_freed_memory_for_reuse()
block = libc.malloc(16 << 20)
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd}))
"""

pytestmark = pytest.mark.slow  # every test probes the allocator in a process of its own


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


# Resident memory (kB) after 64 blocks of 4 MB were written and freed with the setting, before and after
# give_freed_memory_back, in a fresh process.
TRIM_PROBE = """
import ctypes, ctypes.util, json
from MedAutoencoderLib.runtime.allocator import give_freed_memory_back, keep_freed_memory_for_reuse
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def resident_kb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])
keep_freed_memory_for_reuse()
blocks = [libc.malloc(4 << 20) for _ in range(64)]
for block in blocks:
    ctypes.memset(block, 1, 4 << 20)
for block in reversed(blocks):
    libc.free(block)
kept = resident_kb()
given = give_freed_memory_back()
print(json.dumps({"kept": kept, "given": given, "after": resident_kb()}))
"""


@pytest.mark.skipif(not _has_mallinfo2(), reason="mallopt and malloc_trim are glibc's")
def test_memory_kept_for_reuse_is_given_back_on_request():
    """The standby worker keeps freed memory while it detects and gives it back when idle."""
    completed = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(completed.stdout)
    assert probe["given"]
    assert probe["kept"] - probe["after"] > 200 * 1024  # of the 256 MB written and freed
