"""Tests of focal_rpn.layers.hugepages (CPU, under a second)."""
import sys
from pathlib import Path

import pytest
import torch

from focal_rpn.layers.hugepages import (
    MIN_ADVISED_BYTES,
    advise_hugepages,
    empty_hugepage_backed,
)

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_available() -> bool:
    """Linux with transparent huge pages in "always" or "madvise" mode."""
    if not sys.platform.startswith("linux") or not THP_SETTING.exists():
        return False
    return "[never]" not in THP_SETTING.read_text()


def test_large_cpu_buffer_is_advised_where_the_kernel_has_huge_pages():
    t = empty_hugepage_backed((MIN_ADVISED_BYTES // 4 + 123,), torch.float32)
    assert advise_hugepages(t) == _thp_available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_buffer_has_the_requested_shape_and_dtype_and_keeps_values(dtype):
    shape = (3000, 700)  # 8.4 to 16.8 MB
    t = empty_hugepage_backed(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.device.type == "cpu"
    assert t.is_contiguous()
    ref = torch.arange(t.numel(), dtype=torch.int64).view(shape).to(dtype)
    t.copy_(ref)
    assert torch.equal(t, ref)


def test_small_noncontiguous_and_non_cpu_tensors_are_left_alone():
    assert not advise_hugepages(torch.empty(1000))
    big = torch.empty(2 * MIN_ADVISED_BYTES // 4)
    assert not advise_hugepages(big[::2])  # not contiguous
    assert not advise_hugepages(torch.empty(MIN_ADVISED_BYTES, device="meta"))
    t = empty_hugepage_backed((5, 7), torch.float32, torch.device("meta"))
    assert t.shape == (5, 7) and t.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_buffer_is_plain_empty():
    t = empty_hugepage_backed((MIN_ADVISED_BYTES,), torch.float32, torch.device("cuda"))
    assert t.is_cuda and not advise_hugepages(t)
