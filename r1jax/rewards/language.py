"""Language-consistency reward (paper 2.3.2): the share of the chain of thought in the target language.

The detector is offline and script-based (no model, no package): every word is
classified by the Unicode script of its letters (the first word of the
character's Unicode name: LATIN, CYRILLIC, CJK, HIRAGANA, ...). Scripts without
spaces (Han, kana, Thai) count one unit per character, the rest one unit per
word. Digits, symbols and LaTeX are neutral and count for nothing. So English
and French are both "latin": this tells languages apart only when their scripts
differ, which is the mixing the paper reports (English / Chinese).

reward = target-script units / all letter units inside <think> (1.0 when the
reasoning has no letters at all, e.g. pure arithmetic: nothing is off-language).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from r1jax.rewards.extract import think_text

# Languages to the scripts they are written in.
LANGUAGE_SCRIPTS = {
    "en": {"latin"},
    "fr": {"latin"},
    "de": {"latin"},
    "es": {"latin"},
    "it": {"latin"},
    "pt": {"latin"},
    "zh": {"han"},
    "ja": {"han", "kana"},
    "ko": {"hangul", "han"},
    "ru": {"cyrillic"},
    "uk": {"cyrillic"},
    "el": {"greek"},
    "ar": {"arabic"},
    "he": {"hebrew"},
    "hi": {"devanagari"},
    "th": {"thai"},
}
_PER_CHAR_SCRIPTS = {"han", "kana", "thai"}
_NAME_TO_SCRIPT = {
    "LATIN": "latin",
    "CJK": "han",
    "HIRAGANA": "kana",
    "KATAKANA": "kana",
    "HALFWIDTH": "kana",
    "HANGUL": "hangul",
    "CYRILLIC": "cyrillic",
    "GREEK": "greek",
    "ARABIC": "arabic",
    "HEBREW": "hebrew",
    "DEVANAGARI": "devanagari",
    "THAI": "thai",
}
_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+|</?(?:think|answer)>")  # \frac, tags: notation, not language


@functools.lru_cache(maxsize=65536)
def char_script(ch: str) -> str:
    """'latin' / 'han' / 'kana' / 'hangul' / 'cyrillic' / ... / 'other' for one letter."""
    try:
        head = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return "other"
    return _NAME_TO_SCRIPT.get(head, "other")


def script_counts(text: str) -> dict[str, int]:
    """Letter units per script: one per word, or one per character for Han / kana / Thai."""
    counts: dict[str, int] = {}
    for word in _WORD_RE.findall(_LATEX_CMD_RE.sub(" ", text)):
        run_script, run_len = None, 0
        for ch in word + "\0":  # sentinel flushes the last run
            s = char_script(ch) if ch != "\0" else None
            if s != run_script and run_script is not None:
                n = run_len if run_script in _PER_CHAR_SCRIPTS else 1
                counts[run_script] = counts.get(run_script, 0) + n
                run_len = 0
            run_script, run_len = s, run_len + 1
    return counts


def target_scripts(language: str) -> set[str]:
    if language in LANGUAGE_SCRIPTS:
        return LANGUAGE_SCRIPTS[language]
    if language in _NAME_TO_SCRIPT.values():
        return {language}
    raise ValueError(f"language={language!r}: expected a code in {sorted(LANGUAGE_SCRIPTS)} or a script name")


def language_consistency(text: str, language: str = "en") -> float:
    """Fraction of letter units of `text` written in the scripts of `language`."""
    counts = script_counts(text)
    total = sum(counts.values())
    if total == 0:
        return 1.0
    return sum(counts.get(s, 0) for s in target_scripts(language)) / total


def language_consistency_reward(
    completions: Sequence[str],
    *,
    examples: Sequence[Any] | None = None,
    language: str = "en",
    prefix: str = "",
) -> list[float]:
    """Per completion, the target-language share of its <think> block (the whole text if there is no block).

    The target is the record's 'language' field where `examples` carry one, else `language`.
    """
    out = []
    for i, completion in enumerate(completions):
        lang = language
        if examples is not None:
            ex = examples[i]
            own = ex.get("language") if isinstance(ex, Mapping) else getattr(ex, "language", None)
            lang = own or language
        cot = think_text(completion, prefix)
        out.append(language_consistency(prefix + completion if cot is None else cot, lang))
    return out
