"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): a length-aware penalty near the limit.

With L_max the generation limit and L_cache the buffer:

    R(y) = 0                                   |y| <= L_max - L_cache
    R(y) = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
    R(y) = -1                                  |y| > L_max

It is added to the other rewards (weight 1 in DAPO). |y| is in tokens, so the
composition passes the sampler's lengths.
"""

from __future__ import annotations

from collections.abc import Sequence


def overlong_penalty(lengths: Sequence[int], *, max_length: int, buffer: int) -> list[float]:
    """The soft penalty in [-1, 0] per completion length (tokens)."""
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong buffer={buffer} must be in (0, max_length={max_length}]")
    start = max_length - buffer
    out = []
    for n in lengths:
        if n <= start:
            out.append(0.0)
        elif n <= max_length:
            out.append((start - n) / buffer)
        else:
            out.append(-1.0)
    return out


def overlong_reward(
    completions: Sequence[str], *, lengths: Sequence[int] | None, max_length: int, buffer: int
) -> list[float]:
    """`overlong_penalty` in the reward-function signature; needs token `lengths` from the sampler."""
    if lengths is None:
        raise ValueError("overlong reward needs token lengths: pass lengths= to the composed reward function")
    if len(lengths) != len(completions):
        raise ValueError(f"len(lengths)={len(lengths)} != len(completions)={len(completions)}")
    return overlong_penalty(lengths, max_length=max_length, buffer=buffer)
