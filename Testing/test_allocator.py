"""The command line's allocator setting, observed in glibc's own statistics of a fresh process."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# In a fresh process: how many bytes glibc serves by mmap while a 16 MB block is held, before and after the call.
PROBE = """
import ctypes, ctypes.util, json
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def mmapped_while_holding(size):
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblkhd
    libc.free(block)
    return mapped
from MedAutoencoderLib.allocator import keep_freed_memory_for_reuse
before = mmapped_while_holding(16 << 20)
applied = keep_freed_memory_for_reuse()
print(json.dumps({"before": before, "applied": applied, "after": mmapped_while_holding(16 << 20)}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt and mallinfo2 are glibc's")
def test_blocks_under_32_mb_come_from_the_heap_once_set():
    result = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                       check=True).stdout)
    assert result["before"] >= 16 << 20  # glibc's default: a fresh 16 MB block is mmapped
    assert result["applied"]
    assert result["after"] < 16 << 20  # now from the heap, kept for reuse when freed

