"""What a paged fault reads: the mincore count it rests on, and the measurement leaving nothing behind."""

import mmap
import os
from pathlib import Path

import numpy as np

from generator.check import page_faults


def test_resident_bytes_follow_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "rows.bin"
    length = 64 * mmap.PAGESIZE
    path.write_bytes(os.urandom(length))
    rows = np.memmap(path, dtype=np.uint8, mode="r", shape=(length,))
    libc = page_faults._libc()
    try:
        assert page_faults._resident_bytes(libc, rows.ctypes.data, length) == length  # just written: all cached
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        assert page_faults._resident_bytes(libc, rows.ctypes.data, length) == 0
        libc.madvise(rows.ctypes.data, length, mmap.MADV_RANDOM)
        int(rows[5 * mmap.PAGESIZE])
        resident = page_faults._resident_bytes(libc, rows.ctypes.data, length)
        assert mmap.PAGESIZE <= resident < length  # one read brings its folio, not the file
    finally:
        rows._mmap.close()  # type: ignore[attr-defined]


def test_a_fault_reads_whole_pages_and_the_scratch_file_is_removed(tmp_path: Path) -> None:
    fault_bytes = page_faults.measure_fault_bytes(tmp_path, faults=8)
    assert mmap.PAGESIZE <= fault_bytes <= 2 << 20
    assert list(tmp_path.iterdir()) == []
