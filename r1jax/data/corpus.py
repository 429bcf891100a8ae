"""Text corpora built from the built-in tasks: the stage-0 pretraining mix and the stage-2 cold-start set.

The built-in default has no base model to download, so stage 0 pretrains a tiny one on worked solutions of
mixed quality: a fraction of the responses use the R1 tags and the rest answer in plain prose, and a fraction
of the solutions contain a wrong step or a wrong final answer. The resulting base model follows the format
part of the time and is right part of the time, the situation R1-Zero starts from (a small stand-in for
DeepSeek-V3-Base, not a claim about it).

The cold-start set (paper 2.3.1) is the opposite: clean, readable solutions in the paper's output format
`|special_token|<reasoning_process>|special_token|<summary>`. The mapping used here:

    |special_token| … |special_token|   →  <think> … </think>    (the pair around the reasoning process)
    <summary>                           →  <answer> ANSWER </answer>

The summary is the answer block itself, so the strict format reward (nothing after </answer>) and the answer
extraction stay the same in every stage; the readable recap ("So 347+85=432.") is the last sentence of the
reasoning, which the built-in tasks' worked solutions already end with.
"""

from __future__ import annotations

import random
import re

from r1jax.tokenizer import apply_template

# Language mixing (paper 2.3.2: R1-Zero's chains of thought mix languages): words of the built-in tasks' worked
# solutions and their Chinese renderings. `mix_language` swaps some of them, so a reasoning block holds a second
# script, the case the language-consistency reward exists for. Any word not listed stays English.
SECOND_LANGUAGE = {
    "write": "写",
    "carry": "进位",
    "borrow": "借位",
    "shifted": "移位",
    "So": "所以",
    "Wait, let me re-check": "等等，再检查",
}
_MIX_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(SECOND_LANGUAGE, key=len, reverse=True)) + r")\b")


def tagged_response(reasoning: str, answer: str) -> str:
    """The R1 template's completion: `<think> reasoning </think> <answer> answer </answer>`."""
    return f" <think> {reasoning} </think> <answer> {answer} </answer>"


def summary_text(text: str) -> str:
    """What the user sees: the text after the last </think> (the whole text if there is none)."""
    idx = text.rfind("</think>")
    return text if idx < 0 else text[idx + len("</think>") :].strip()


def plain_response(reasoning: str, answer: str) -> str:
    return f" {reasoning} The answer is {answer}."


def pretraining_records(
    task,
    n: int,
    *,
    seed: int,
    difficulty: int,
    template: str,
    format_rate: float,
    error_rate: float,
    direct_rate: float = 0.0,
    direct_error_rate: float = 0.0,
    recheck_rate: float = 0.0,
    checked_direct_rate: float = 0.0,
    language_mix_rate: float = 0.0,
) -> list[dict]:
    """SFT records {id, prompt, response} of mixed quality for stage 0.

    Each record takes one solution style: a one-step direct answer with probability `direct_rate` (wrong with
    probability `direct_error_rate`), a worked solution whose slip is caught by a re-check step with probability
    `recheck_rate`, a direct answer (as wrong as the direct ones) followed by a re-check that works the problem out
    column by column with probability `checked_direct_rate`, otherwise a worked solution that holds a mistake with
    probability `error_rate`. The R1 tags wrap a `format_rate` share of every style, so the tags alone do not tell
    a good answer from a bad one. A `language_mix_rate` share of the reasoning mixes in a second script
    (`mix_language`), as a multilingual base model's does (the paper's R1-Zero mixes languages).
    """
    rates = dict(format_rate=format_rate, error_rate=error_rate, direct_rate=direct_rate)
    rates.update(direct_error_rate=direct_error_rate, recheck_rate=recheck_rate,
                 checked_direct_rate=checked_direct_rate, language_mix_rate=language_mix_rate)
    for name, v in rates.items():
        if not 0 <= v <= 1:
            raise ValueError(f"data.{name}={v}: must be in [0, 1]")
    styles = dict(direct_rate=direct_rate, recheck_rate=recheck_rate, checked_direct_rate=checked_direct_rate)
    named = ", ".join(f"data.{k}={v}" for k, v in styles.items())
    if sum(styles.values()) > 1:
        raise ValueError(f"{named}: their sum must be at most 1")
    styled = any(styles.values())
    needed = ("direct_solution", "rechecked_solution", "checked_direct_solution")
    if styled and not all(hasattr(task, name) for name in needed):
        raise ValueError(f"{named}: task {task.name!r} has only worked solutions; set them to 0")
    rng = random.Random(seed)
    mix_rng = random.Random(f"language-mix/{seed}")  # its own stream: a corpus without mixing stays what it was
    out = []
    for ex in task.generate(n, seed=seed, difficulty=difficulty, split="train"):  # training data: train split only
        # Without styles no extra draw is made, so the corpus of a worked-only preset stays what it was.
        u = rng.random() if styled else 1.0
        if u < direct_rate:
            reasoning, answer = task.direct_solution(ex, rng, direct_error_rate)
        elif u < direct_rate + recheck_rate:
            reasoning, answer = task.rechecked_solution(ex, rng)
        elif u < direct_rate + recheck_rate + checked_direct_rate:
            reasoning, answer = task.checked_direct_solution(ex, rng, direct_error_rate)
        else:
            reasoning, answer = task.noisy_solution(ex, rng, error_rate)
        if language_mix_rate and mix_rng.random() < language_mix_rate:
            reasoning = mix_language(reasoning, mix_rng)
        render = tagged_response if rng.random() < format_rate else plain_response
        prompt = apply_template(ex.question, template)
        out.append({"id": ex.id, "prompt": prompt, "response": render(reasoning, answer)})
    return out


def mix_language(text: str, rng: random.Random, word_rate: float = 0.5) -> str:
    """`text` with each word of SECOND_LANGUAGE swapped for its Chinese rendering with probability `word_rate`
    (at least one swapped when any occurs): reasoning that mixes two scripts."""
    hits = list(_MIX_RE.finditer(text))
    if not hits:
        return text
    keep = {rng.randrange(len(hits))}  # at least one word in the second script
    keep |= {i for i in range(len(hits)) if rng.random() < word_rate}
    parts, last = [], 0
    for i, m in enumerate(hits):
        parts += [text[last : m.start()], SECOND_LANGUAGE[m.group(0)] if i in keep else m.group(0)]
        last = m.end()
    return "".join(parts) + text[last:]


def cold_start_records(
    task, n: int, *, seed: int, difficulty: int, template: str, language_mix_rate: float = 0.0
) -> list[dict]:
    """Readable long-CoT records for stage 2: `<think> reasoning </think> <answer> summary </answer>`, every
    solution correct and in the format (see the module docstring for the mapping to the paper's). A
    `language_mix_rate` share of them mix a second script into the reasoning (`mix_language`): cold-start data
    gathered from R1-Zero outputs and human post-processing is not perfectly clean, and the mixing it leaves is what
    stage 3's language-consistency reward has to remove."""
    if not 0 <= language_mix_rate <= 1:
        raise ValueError(f"data.language_mix_rate={language_mix_rate}: must be in [0, 1]")
    rng = random.Random(f"language-mix/{seed}")
    out = []
    for ex in task.generate(n, seed=seed, difficulty=difficulty, split="train"):  # training data: train split only
        reasoning = task.worked_solution(ex)
        if language_mix_rate and rng.random() < language_mix_rate:
            reasoning = mix_language(reasoning, rng)
        response = cold_start_response(reasoning, ex.answer)
        out.append({"id": ex.id, "prompt": apply_template(ex.question, template), "response": response})
    return out


def cold_start_response(reasoning: str, summary: str) -> str:
    """`|special_token|<reasoning_process>|special_token|<summary>` with <think></think> as the token pair."""
    return f" <think> {reasoning} </think> <answer> {summary} </answer>"


def tokenizer_texts(records: list[dict]) -> list[str]:
    """Text to train the sentencepiece model on: prompts and responses."""
    return [r["prompt"] + r["response"] for r in records]
