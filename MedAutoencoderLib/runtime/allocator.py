"""Memory allocator settings for the processes this library runs (the command line and its background jobs).

Why: a network pass allocates and frees activation tensors of a few megabytes at every layer. By default glibc's
malloc hands such blocks out as fresh ``mmap`` pages, or trims them off the top of the heap when freed, so every
pass page-faults (and the kernel zeroes) its memory again: on two cores the default model's network pass took
0.93 s that way and 0.51 s with freed blocks kept for reuse (the same output to the bit). PyTorch's CPU allocator
does not cache; it relies on malloc. This is set for a process as a whole, so only the command line's own process
calls it, not a library call inside a long-lived application such as Slicer.
"""
from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems: blocks below it use the heap
_TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024  # free heap top kept up to this (it is the process's own peak anyway)


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's malloc serve blocks below 32 MB from the heap and keep freed heap memory for reuse (up to
    1 GB) instead of returning it to the system. Returns whether both settings took: False where the C library
    has no ``mallopt`` (macOS, Windows: nothing changes) or refuses a setting (32-bit glibc refuses 32 MB)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library (Windows has no such handle: TypeError)
    except (OSError, TypeError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))


def give_freed_memory_back() -> bool:
    """Return the heap's free memory to the system (glibc ``malloc_trim``), for a process that stays up idle
    between jobs after :func:`keep_freed_memory_for_reuse`. Returns whether memory was given back."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, TypeError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(malloc_trim(0))
