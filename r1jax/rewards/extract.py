"""Pulling the parts out of a completion: the <think> block, the final answer, code blocks.

The R1 template asks for `<think> reasoning </think> <answer> answer </answer>`;
math answers are often written as `\\boxed{...}`; a bare last number is the
last resort. Extraction methods are tried in the configured order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1jax.data.corpus import summary_text  # noqa: F401  (part of this module's API; the format's reader)
from r1jax.data.formats import last_boxed  # noqa: F401  (part of this module's API)

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_CODE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)

EXTRACTORS = ("answer_tag", "boxed", "last_number")


def answer_tag(text: str) -> str | None:
    """Content of the last <answer>...</answer>; None if there is none."""
    found = ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    """The last number in the text ('1,234', '-3.5', '3/4'), commas removed."""
    found = _NUMBER_RE.findall(text)
    return found[-1].replace(",", "").replace(" ", "") if found else None


def extract_answer(text: str, methods: Sequence[str] = EXTRACTORS) -> str | None:
    """The final answer of a completion by the first method that finds one.

    'answer_tag': the last <answer> block; if it holds a \\boxed{} the box content is used.
    'boxed': the last \\boxed{} anywhere. 'last_number': the last number anywhere.
    """
    for method in methods:
        if method == "answer_tag":
            found = answer_tag(text)
            if found is not None:
                return last_boxed(found) or found
        elif method == "boxed":
            found = last_boxed(text)
        elif method == "last_number":
            found = last_number(text)
        else:
            raise ValueError(f"extract method={method!r}: expected one of {EXTRACTORS}")
        if found is not None:
            return found
    return None


def think_text(text: str, prefix: str = "") -> str | None:
    """The reasoning inside <think>...</think> (first block), or None if the block is missing."""
    m = THINK_RE.search(prefix + text)
    return m.group(1) if m else None


def code_block(text: str, languages: Sequence[str] = ("python", "py", "python3", "")) -> str | None:
    """The last fenced code block in one of `languages` ('' = no language tag); searches the answer part first."""
    for part in (answer_tag(text), summary_text(text), text):
        if not part:
            continue
        blocks = [code for lang, code in _CODE_RE.findall(part) if lang.lower() in languages]
        if blocks:
            return blocks[-1]
    return None
