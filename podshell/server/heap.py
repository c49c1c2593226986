"""Keep bulk-transfer buffers on the heap (glibc).

A port-forward reads 256 KiB at a time and frames it for TLS; with glibc's
defaults, allocations that size are sometimes mmap()ed and unmapped again,
or the heap's top is trimmed after each, and every buffer then faults its
pages in afresh: measured, 750,000 page faults per GiB forwarded and a
transfer at half speed, depending on luck.  Fixed thresholds keep buffers up
to 1 MiB on the heap and let up to 16 MiB of free heap stay mapped for the
next one.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 16 << 20


def keep_buffers_on_the_heap() -> bool:
    """Set glibc's thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
