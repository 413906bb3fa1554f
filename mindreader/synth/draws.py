"""Fast, seeded scalar draws for the many small random choices of scenes and captions.

NumPy's Generator costs microseconds per scalar call; scenes and captions make tens of choices
per image, so they draw from a block of uniforms generated ahead by NumPy instead. Same seed,
same sequence (with the pinned NumPy).
"""

from __future__ import annotations

import zlib
from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")

BLOCK = 4096


def stream_seed(seed: int, *keys: str | int) -> list[int]:
    """Seed entropy for the random stream named by ``keys`` under the world ``seed``.

    Each concern (scenes, captions, design, one subject's brain) has its own stream, so changing
    one (e.g. the configured subjects) leaves the others as they were. Strings are hashed with
    CRC32, which, unlike Python's hash(), is the same in every process.
    """
    return [int(seed)] + [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]


class Draws:
    """Uniform floats, integers, choices and permutations from a seeded NumPy generator, in blocks."""

    def __init__(
        self,
        rng: np.random.Generator,  # the generator the uniforms come from
    ):
        self.rng = rng
        self._block = np.empty(0)
        self._next = 0

    def random(self) -> float:
        """A uniform float in [0, 1)."""
        if self._next == len(self._block):
            self._block = self.rng.random(BLOCK)
            self._next = 0
        value = self._block[self._next]
        self._next += 1
        return float(value)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def below(self, n: int) -> int:
        """A uniform integer in 0 .. n-1."""
        return min(int(self.random() * n), n - 1)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def weighted(self, probs: Sequence[float]) -> int:
        """An index drawn with probabilities ``probs`` (which sum to 1)."""
        u, total = self.random(), 0.0
        for i, p in enumerate(probs):
            total += p
            if u < total:
                return i
        return len(probs) - 1

    def permutation(self, n: int) -> list[int]:
        """A uniform random order of 0 .. n-1 (Fisher-Yates)."""
        order = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            order[i], order[j] = order[j], order[i]
        return order
