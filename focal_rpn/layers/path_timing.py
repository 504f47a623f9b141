"""Timing two implementations of one operation on the machine at hand, so that a layer can take
the faster (``WinogradConv2d``'s convolution path, ``FastROIAlign``'s inference kernel): the
same idea as ``torch.backends.cudnn.benchmark``, for CPU code paths whose speed depends on the
CPU's vector units, its thread count and the shapes."""
import math
import time
from typing import Callable, Dict


def best_times(paths: Dict[str, Callable[[], object]], rounds: int = 3) -> Dict[str, float]:
    """The best wall time in seconds of each of ``paths`` (callables without arguments): each
    runs once to warm up (first-touch allocations, oneDNN primitive creation), then ``rounds``
    times, alternately and in reversed order every other round, so that drift of a shared
    machine hits all of them."""
    best = {name: math.inf for name in paths}
    for run in paths.values():
        run()
    order = list(paths)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            paths[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best
