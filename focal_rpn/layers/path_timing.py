"""Timing two implementations of one operation on the machine at hand, so that a layer can take
the faster (``WinogradConv2d``'s convolution path, ``FastROIAlign``'s inference kernel): the
same idea as ``torch.backends.cudnn.benchmark``, for CPU code paths whose speed depends on the
CPU's vector units, its thread count and the shapes."""
import math
import time
from typing import Any, Callable, Dict, Hashable


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


class CachedPathChoice:
    """The cache of a tuner that times two paths once per kind of call and keeps the outcome
    (``WinogradConv2d``'s :class:`~focal_rpn.layers.winograd.ConvPathTuner`, ``FastROIAlign``'s
    :class:`~focal_rpn.layers.roi_align.ROIAlignPathTuner`).

    A subclass says what a kind of call is (``key(*call)``), how its two paths are timed
    (``_time(*call)``, with :func:`best_times` and :meth:`prefers`) and how a new choice is
    logged (``_log(key, choice, *call)``); :meth:`choose` looks up, times and logs once.
    ``margin``: the challenger must take less than ``margin`` of the reference path's time
    to be chosen, so that near-ties (and noise) stay on the reference.
    """

    def __init__(self, rounds: int = 3, margin: float = 0.9):
        self.rounds = rounds
        self.margin = margin
        self._choices: Dict[Hashable, Any] = {}

    def choices(self) -> Dict[Hashable, Any]:
        """A copy of the choices made so far, by key."""
        return dict(self._choices)

    def clear(self) -> None:
        """Forget every choice: the next calls time again."""
        self._choices.clear()

    def prefers(self, challenger_s: float, reference_s: float) -> bool:
        """Whether a path timed at ``challenger_s`` beats the reference timed at
        ``reference_s`` by the margin."""
        return challenger_s < self.margin * reference_s

    def choose(self, *call):
        """The cached choice for ``call``'s kind, or a new one, timed on ``call`` and logged."""
        key = self.key(*call)
        choice = self._choices.get(key)
        if choice is None:
            choice = self._time(*call)
            self._choices[key] = choice
            self._log(key, choice, *call)
        return choice

    def key(self, *call) -> Hashable:
        raise NotImplementedError

    def _time(self, *call):
        raise NotImplementedError

    def _log(self, key, choice, *call) -> None:
        raise NotImplementedError
