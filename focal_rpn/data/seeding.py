"""Seeds derived from integer keys, and RNGs seeded for the span of a ``with`` block.

Exact resume (see ``focal_rpn.data.resumable`` and ``focal_rpn.engine.guards.IterationSeeder``)
replaces saving RNG states by seeding from (seed, stream position) or (seed, rank, iteration).
"""
import contextlib
import random

import numpy as np
import torch


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer ``keys`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_all(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch's CPU and CUDA RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run the body with python / numpy / torch-CPU RNGs seeded by ``seed``, then restore them
    (the caller's RNG streams are not advanced)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
