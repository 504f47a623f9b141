"""Fresh CPU tensors backed by transparent huge pages.

Why: a fresh CPU tensor of more than 32 MB (glibc's largest mmap threshold) gets new pages from
the kernel on every call, and the first write to each 4 KB page is a page fault. For the
(120,000 x 81) float32 gradient of the softmax focal loss that is about 9,500 faults (their
measured cost is in the docs/results/benchmarks-2026-11-23.md, softmax focal loss); with 2 MB pages it is
about 20 faults. PyTorch can do this process-wide (the ``THP_MEM_ALLOC_ENABLE`` environment
variable, read at start-up); this module does it for the buffers we choose, by advising the
kernel (``madvise(MADV_HUGEPAGE)``) over the 2 MB-aligned inside of the buffer before anything
writes to it. It changes no values and no other memory.

Where the advice cannot be given (not Linux, no libc, a kernel with transparent huge pages
"never", CUDA tensors, small tensors) the tensor is an ordinary ``torch.empty``.
"""
import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Optional, Sequence

import torch

__all__ = ["empty_hugepage_backed"]

#: Size of a transparent huge page on x86-64 and arm64 (4 KB base pages).
HUGE_PAGE_BYTES = 2 << 20
#: Smaller buffers are left alone: they come from glibc's reused heap, or are too few pages
#: to be worth a system call.
MIN_ADVISED_BYTES = 8 << 20
_MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux


@lru_cache(maxsize=None)
def _madvise():
    """libc's madvise as a ctypes function, or None where there is none to call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_hugepages(tensor: torch.Tensor) -> bool:
    """Ask the kernel to back the whole 2 MB pages inside ``tensor``'s memory with huge pages.

    Only useful before the memory is first written. Returns whether the advice was given
    (False: not a large contiguous CPU tensor, or no madvise, or the kernel refused it).
    """
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or nbytes < MIN_ADVISED_BYTES or not tensor.is_contiguous():
        return False
    madvise = _madvise()
    if madvise is None:
        return False
    start = tensor.data_ptr()
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES  # round up: stay inside the buffer
    end = (start + nbytes) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if end <= first:
        return False
    return madvise(first, end - first, _MADV_HUGEPAGE) == 0


def empty_hugepage_backed(
    shape: Sequence[int], dtype: torch.dtype, device: Optional[torch.device] = None
) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``; on CPU, when large, huge-page backed.

    The values are uninitialised, as with ``torch.empty``. Use it for a large buffer that is
    written once per call (a gradient, an output), not for tensors kept for long: a huge page
    is only returned to the system as a whole.
    """
    tensor = torch.empty(shape, dtype=dtype, device=device)
    advise_hugepages(tensor)
    return tensor
