"""What one page fault of a paged shard brings into memory, measured on the filesystem a repository lives on.

A paged shard's rows are mapped with `MADV_RANDOM` and read only where requests look (`planning.paging`); each
first read of a page faults, and the kernel reads a folio of a size it picks (4 KiB, or up to its large-folio
size on filesystems that have them). This writes a scratch file beside the repository, drops it from the page
cache, maps it as the runtime maps paged rows, reads one byte at isolated offsets (far enough apart that no two
share a folio), and counts the resident bytes with `mincore(2)`: bytes per fault is what the planner charges a
touched block of rows.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

_FAULTS = 64
#: Offsets this far apart never share a folio (the largest page-cache folio is 2 MiB).
_SPACING_BYTES = 4 << 20
_PAGE_BYTES = mmap.PAGESIZE


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _resident_bytes(libc: ctypes.CDLL, address: int, length: int) -> int:
    pages = -(-length // _PAGE_BYTES)
    vector = np.zeros(pages, dtype=np.uint8)
    if libc.mincore(address, length, vector.ctypes.data) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return int(np.count_nonzero(vector & 1)) * _PAGE_BYTES


def measure_fault_bytes(directory: Path, faults: int = _FAULTS) -> int:
    """Mean bytes resident per isolated first read of a page of a `MADV_RANDOM` mapping of a file in `directory`."""
    length = faults * _SPACING_BYTES
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".recgen-faults-") as scratch:
        chunk = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint8).tobytes()
        for _ in range(length // len(chunk)):
            scratch.write(chunk)
        scratch.flush()
        os.fsync(scratch.fileno())
        os.posix_fadvise(scratch.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        rows = np.memmap(scratch.name, dtype=np.uint8, mode="r", shape=(length,))
        try:
            libc = _libc()
            address = rows.ctypes.data
            if libc.madvise(address, length, mmap.MADV_RANDOM) != 0:
                raise OSError(ctypes.get_errno(), "madvise(MADV_RANDOM) failed")
            before = _resident_bytes(libc, address, length)
            offsets = np.arange(faults) * _SPACING_BYTES + _SPACING_BYTES // 2
            int(rows[offsets].sum())  # one first read per offset
            after = _resident_bytes(libc, address, length)
        finally:
            mapping = rows._mmap  # type: ignore[attr-defined]
            del rows
            if mapping is not None:
                mapping.close()
    return max(_PAGE_BYTES, round((after - before) / faults))
