"""Built-in general (non-reasoning) data: prompts, helpful answers, and synthetic preference pairs.

The paper's stages 4 and 5 need data that is not reasoning: non-reasoning SFT samples mixed into the
rejection-sampling set (2.3.3), and human-preference pairs for the reward models of all-scenario RL (2.3.4).
Nothing can be downloaded, so the built-in default generates both procedurally from a seed, with short tasks
that the tiny tokenizer handles and that have one helpful answer each:

    kind     question          helpful answer
    echo     Echo 4719.        4719
    repeat   Repeat 47 twice.  47 47
    reverse  Reverse 3817.     7183
    first    First digit of 3817?   3
    greet    Hello!            Hello! How can I help?

Every record carries `task = GENERAL_TASK`, which is how the GRPO trainer routes general prompts to the reward
model instead of the rule rewards. Answers are rendered in the same output format as the reasoning data
(`<think> short note </think> <answer> answer </answer>`), so the model has one format to follow.

A preference pair is (prompt, chosen, rejected): chosen is the helpful, well-formatted answer; rejected is one of

    refusal        unhelpful: "I cannot help with that."
    wrong          garbled: a wrong answer (digits changed, letters swapped)
    harmful        the answer is the harmful-marker text
    harmful_think  a correct answer whose reasoning holds the harmful marker (only a whole-response score sees it)
    unformatted    the right answer without the tags

and a share of the pairs (not harmful_think) is reduced to the summary (the text after </think>), because the
paper scores helpfulness on the summary only and harmlessness on the whole response: the reward model sees both.
Files with real pairs replace all this through `load_preference_pairs` (JSONL / Parquet / ArrayRecord rows with
prompt, chosen and rejected fields).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from r1jax.data import provenance
from r1jax.data.corpus import cold_start_response, summary_text
from r1jax.data.sources import get_field, get_id, load_files
from r1jax.tokenizer import apply_template

GENERAL_TASK = "general"
KINDS = ("echo", "repeat", "reverse", "first", "greet")
REJECTIONS = ("refusal", "wrong", "harmful", "harmful_think", "unformatted")
HARM_MARKER = "UNSAFE"  # stands for harmful content; the reward model must learn to score it low
REFUSAL = "I cannot help with that."
_GREETINGS = ("Hello!", "Hi!", "Hey!", "Good day!")
_GREETING_ANSWER = "Hello! How can I help?"
_TIMES = {2: "twice", 3: "three times"}


def _number(rng: random.Random) -> str:
    digits = rng.randint(2, 4)
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _make(kind: str, rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, short reasoning) of one general prompt."""
    if kind == "echo":
        x = _number(rng)
        return f"Echo {x}.", x, "Say the number back."
    if kind == "repeat":
        x, k = _number(rng), rng.choice(sorted(_TIMES))
        return f"Repeat {x} {_TIMES[k]}.", " ".join([x] * k), f"Write {x} {_TIMES[k]}."
    if kind == "reverse":
        x = _number(rng)
        return f"Reverse {x}.", x[::-1], "Read the digits from the right."
    if kind == "first":
        x = _number(rng)
        return f"First digit of {x}?", x[0], "Take the leftmost digit."
    if kind == "greet":
        return rng.choice(_GREETINGS), _GREETING_ANSWER, "A greeting."
    raise ValueError(f"general kind={kind!r}: expected one of {KINDS}")


def _make_in_split(kind: str, rng: random.Random, split: str | None) -> tuple[str, str, str, str]:
    """(kind, question, answer, reasoning) of a general prompt in the content split `split` (None: any).

    Prompts are redrawn until their normalised question falls in the split; a kind with no prompt there
    (greetings are four questions in all) gives way to another kind."""
    for k in [kind] + [rng.choice(KINDS) for _ in range(20)]:
        for _ in range(100):
            question, answer, reasoning = _make(k, rng)
            if split is None or provenance.question_split(question) == split:
                return k, question, answer, reasoning
    raise ValueError(f"general prompts: no prompt of split {split!r} found")


def general_records(n: int, *, seed: int, split: str | None = "train") -> list[dict]:
    """Prompt records {id, question, answer, task, meta} of general prompts, as the GRPO prompt pipeline reads them.

    `answer` is the reference answer (for evaluation); RL scores these prompts with the reward model. Only
    prompts of the content split `split` (r1jax.data.provenance; 'train' for every training stage, None for
    the whole space) are drawn.
    """
    if n < 0:
        raise ValueError(f"general prompts n={n}: must be >= 0")
    if split is not None:
        provenance.check_split(split, "general prompts: split")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
        kind, question, answer, reasoning = _make_in_split(kind, rng, split)
        out.append(
            {
                "id": f"general-{seed}-{i}" if split is None else f"general-{split}-{seed}-{i}",
                "question": question,
                "answer": answer,
                "task": GENERAL_TASK,
                "meta": {"kind": kind, "reasoning": reasoning},
            }
        )
    return out


def helpful_response(record: dict) -> str:
    return cold_start_response(record["meta"]["reasoning"], record["answer"])


def non_reasoning_records(n: int, *, seed: int, template: str, split: str | None = "train") -> list[dict]:
    """SFT records {id, prompt, response} of general prompts with their helpful answers (stage 4's mix-in)."""
    return [
        {"id": r["id"], "prompt": apply_template(r["question"], template), "response": helpful_response(r)}
        for r in general_records(n, seed=seed, split=split)
    ]


def _wrong(answer: str, rng: random.Random) -> str:
    """A garbled answer that differs from `answer`: a digit changed, or two letters swapped."""
    chars = list(answer)
    idx = [i for i, ch in enumerate(chars) if ch.isdigit()]
    if idx:
        i = rng.choice(idx)
        chars[i] = str((int(chars[i]) + rng.randint(1, 9)) % 10)
    else:
        letters = [
            i
            for i in range(len(chars) - 1)
            if chars[i].isalpha() and chars[i + 1].isalpha() and chars[i] != chars[i + 1]
        ]
        i = rng.choice(letters)
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def rejected_response(record: dict, kind: str, rng: random.Random) -> str:
    reasoning, answer = record["meta"]["reasoning"], record["answer"]
    if kind == "refusal":
        return cold_start_response(reasoning, REFUSAL)
    if kind == "wrong":
        return cold_start_response(reasoning, _wrong(answer, rng))
    if kind == "harmful":
        return cold_start_response(reasoning, f"Do something {HARM_MARKER}.")
    if kind == "harmful_think":
        return cold_start_response(f"{reasoning} Plan something {HARM_MARKER}.", answer)
    if kind == "unformatted":
        return f" {answer}"
    raise ValueError(f"rejection kind={kind!r}: expected one of {REJECTIONS}")


def preference_pairs(
    n: int, *, seed: int, summary_fraction: float = 0.5, split: str | None = "train"
) -> list[dict]:
    """n synthetic pairs {id, prompt, chosen, rejected, kind}; `prompt` is the bare question (no template).

    Prompts come from the content split `split` only, so pairs built from two different splits (training and
    held-out pairs) never share a prompt, let alone a whole pair."""
    if not 0 <= summary_fraction <= 1:
        raise ValueError(f"summary_fraction={summary_fraction}: must be in [0, 1]")
    rng = random.Random(seed + 7919)
    out = []
    for i, record in enumerate(general_records(n, seed=seed, split=split)):
        kind = REJECTIONS[i % len(REJECTIONS)]
        chosen, rejected = helpful_response(record), rejected_response(record, kind, rng)
        if kind not in ("harmful_think", "unformatted") and rng.random() < summary_fraction:
            chosen, rejected = " " + summary_text(chosen), " " + summary_text(rejected)
        out.append(
            {
                "id": f"pref-{seed}-{i}" if split is None else f"pref-{split}-{seed}-{i}",
                "prompt": record["question"],
                "chosen": chosen,
                "rejected": rejected,
                "kind": kind,
            }
        )
    return out


def load_preference_pairs(
    paths: str | Sequence[str],
    *,
    prompt_field="prompt",
    chosen_field="chosen",
    rejected_field="rejected",
    on_error: str = "raise",
) -> list[dict]:
    """Pairs {id, prompt, chosen, rejected, kind=''} from local files; a malformed row names its file and line."""

    def convert(row: dict, default_id: str) -> dict:
        return {
            "id": get_id(row, "id", default_id),
            "prompt": get_field(row, prompt_field, (str,), required=True),
            "chosen": get_field(row, chosen_field, (str,), required=True),
            "rejected": get_field(row, rejected_field, (str,), required=True),
            "kind": str(row.get("kind") or ""),
        }

    return list(load_files(paths, convert, on_error=on_error))
