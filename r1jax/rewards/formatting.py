"""Format reward (paper 2.2.2 "format rewards"): reasoning in <think>, the answer in <answer>.

R1-Zero's template: "... The reasoning process and answer are enclosed within
<think> </think> and <answer> </answer> tags ... Assistant:". Some setups end
the prompt with "<think>", so the completion starts mid-block: pass
`prefix='<think>'` and it is prepended before checking.

strict:  the whole completion is exactly one <think> block followed by exactly one
         <answer> block (whitespace around and between allowed), both non-empty,
         nothing after </answer>, no other tags of either kind (no nesting).
lenient: a <think> block followed somewhere later by an <answer> block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_STRICT_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_LENIENT_RE = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
FORMAT_MODES = ("strict", "lenient")


def format_ok(text: str, mode: str = "strict") -> bool:
    if mode == "lenient":
        return _LENIENT_RE.search(text) is not None
    if mode != "strict":
        raise ValueError(f"format mode={mode!r}: expected one of {FORMAT_MODES}")
    m = _STRICT_RE.match(text)
    if m is None or any(text.count(tag) != 1 for tag in _TAGS):
        return False
    return bool(m.group(1).strip()) and bool(m.group(2).strip())


def format_reward(completions: Sequence[str], *, mode: str = "strict", prefix: str = "") -> list[float]:
    """1.0 where the completion (after `prefix`) follows the template, else 0.0."""
    return [float(format_ok(prefix + c, mode)) for c in completions]
