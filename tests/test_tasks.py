"""Built-in tasks: gold answers and worked solutions verify, perturbations do not, generation is seeded, and the
train / validation / test splits are disjoint by content."""

import collections
import random
import re

import numpy as np
import pytest

from benchmarks.studies import reflection_kinds
from r1jax.data import corpus, provenance
from r1jax.data.tasks import Example, evaluate, get_task

TASKS = ("arithmetic", "countdown")


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_gold_answers_and_worked_solutions_verify(name, difficulty):
    task = get_task(name)
    examples = task.generate(60, seed=3, difficulty=difficulty)
    assert len({e.id for e in examples}) == 60
    for e in examples:
        assert e.task == name
        assert task.verify(e.answer, e), e
        assert task.worked_solution(e) == e.solution
        assert "<answer>" not in e.solution and "<think>" not in e.solution
        # The last step states the final result.
        last = re.search(r"So (.+)=(-?\d+)\.$", e.solution)
        assert last is not None, e.solution
        if name == "arithmetic":
            assert last.group(2) == e.answer
            a, op, b = e.meta["a"], e.meta["op"], e.meta["b"]
            assert last.group(1) == f"{a}{op}{b}"
            assert int(e.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]
        else:
            assert last.group(1) == e.answer and int(last.group(2)) == e.meta["target"]
            assert evaluate(e.answer)[0] == e.meta["target"]


def test_arithmetic_steps_are_correct_column_arithmetic():
    e = Example("x", "What is 347+85?", "432", "", "arithmetic", {"a": 347, "b": 85, "op": "+"})
    assert get_task("arithmetic").worked_solution(e) == (
        "7+5=12, write 2, carry 1. 4+8+1=13, write 3, carry 1. 3+0+1=4, write 4. So 347+85=432."
    )
    e = Example("y", "What is 742-23?", "719", "", "arithmetic", {"a": 742, "b": 23, "op": "-"})
    assert get_task("arithmetic").worked_solution(e) == (
        "12-3=9, write 9, borrow 1. 4-2-1=1, write 1. 7-0=7, write 7. So 742-23=719."
    )
    e = Example("z", "What is 58*7?", "406", "", "arithmetic", {"a": 58, "b": 7, "op": "*"})
    assert get_task("arithmetic").worked_solution(e) == "8*7=56, write 6, carry 5. 5*7+5=40, write 0, carry 4. " + (
        "write 4. So 58*7=406."
    )


def test_default_difficulty_is_short_and_regular():
    examples = get_task("arithmetic").generate(500, seed=0)
    assert all(e.meta["op"] == "+" for e in examples)
    assert max(len(e.solution.split()) for e in examples) < 40
    assert max(len(e.question.split()) for e in examples) <= 4
    step = re.compile(r"^(\d\+\d(\+1)?=\d+, write \d(, carry 1)?\.|write 1\.)$")
    for e in examples[:100]:
        steps = re.findall(r"[^.]+\.", e.solution.rsplit(" So ", 1)[0])
        assert all(step.match(s.strip()) for s in steps), e.solution


def test_arithmetic_rejects_perturbed_answers():
    task = get_task("arithmetic")
    for e in task.generate(50, seed=1, difficulty=3):
        gold = int(e.answer)
        for wrong in (gold + 1, gold - 1, gold * 10):
            assert not task.verify(str(wrong), e)
        assert task.verify(f" {gold}.0 ", e) and task.verify(f"{gold:,}", e)
        assert not task.verify("", e) and not task.verify(None, e) and not task.verify("forty", e)


def test_countdown_verifier():
    task = get_task("countdown")
    e = Example("c", "", "75-25+3", "", "countdown", {"numbers": [75, 3, 25], "target": 53})
    assert task.verify("75-25+3", e) and task.verify("3+75-25", e) and task.verify("(75 - 25) + 3 = 53", e)
    assert not task.verify("(75-25)+3 = 54", e)
    assert not task.verify("75-25+3+0", e)  # 0 is not a given number
    assert not task.verify("75-25+3*1", e)
    assert not task.verify("75+3-25+3-3", e)  # 3 used three times
    assert not task.verify("75-22", e)  # right value, number not given
    assert not task.verify("75/(25-25)+3", e)  # division by zero, and 25 twice
    assert not task.verify("__import__('os').system('true')", e)  # parsed, never eval'd
    assert not task.verify("53", e) and not task.verify("", e) and not task.verify(None, e)
    # From a record as the prompt pipeline carries it (question text, no meta), and TinyZero's all-numbers rule.
    record = {
        "question": "Using the numbers [75, 3, 25], make 53 with + - * /, each number at most once.",
        "answer": "",
    }
    assert task.verify("75-25+3", record) and not task.verify("75-25", record)
    assert get_task("countdown", require_all=True).verify("75-25+3", e)
    e2 = Example("c2", "", "", "", "countdown", {"numbers": [4, 6, 10], "target": 10})
    assert get_task("countdown").verify("4+6", e2) and not get_task("countdown", require_all=True).verify("4+6", e2)


def test_countdown_rejects_perturbed_answers():
    task = get_task("countdown")
    for e in task.generate(50, seed=2, difficulty=2):
        numbers = re.findall(r"\d+", e.answer)
        bumped = e.answer.replace(numbers[0], str(int(numbers[0]) + 1), 1)
        assert not task.verify(bumped, e) or evaluate(bumped)[0] == e.meta["target"]
        assert not task.verify(f"{e.answer}+{numbers[0]}", e)  # reuses a number and misses the target


@pytest.mark.parametrize("name", TASKS)
def test_seeded_generation(name):
    task = get_task(name)
    a, b = task.generate(30, seed=7), task.generate(30, seed=7)
    assert a == b
    c = task.generate(30, seed=8)
    assert sum(x.question != y.question for x, y in zip(a, c)) >= 25
    assert task.generate(30, seed=7, difficulty=2)[0].question != a[0].question or name == "countdown"


# Each case: a task and difficulty whose problem space is small enough that seeds alone collide (difficulty 0:
# 8,100 two-digit additions), so a split by seed would leak and the check below would see it.
SPLIT_CASES = [("arithmetic", 0), ("arithmetic", 6), ("countdown", 1)]


@pytest.mark.parametrize("name,difficulty", SPLIT_CASES)
def test_content_splits_are_disjoint_whatever_the_seeds(name, difficulty):
    task = get_task(name)
    n_train = 1000 if name == "countdown" else 6000
    train = task.generate(n_train, seed=1, difficulty=difficulty, split="train")
    val = task.generate(300, seed=2, difficulty=difficulty, split="validation")
    test = task.generate(300, seed=2, difficulty=difficulty, split="test")
    assert (len(train), len(val), len(test)) == (n_train, 300, 300)
    for part, split in ((train, "train"), (val, "validation"), (test, "test")):
        assert len({e.id for e in part}) == len(part)
        assert all(provenance.split_of(task.split_key(e)) == split for e in part)
    text = {s: {provenance.normalise_question(e.question) for e in p} for s, p in (("tr", train), ("va", val),
                                                                                       ("te", test))}
    keys = {s: {task.split_key(e) for e in p} for s, p in (("tr", train), ("va", val), ("te", test))}
    for a, b in (("tr", "va"), ("tr", "te"), ("va", "te")):
        assert text[a].isdisjoint(text[b]) and keys[a].isdisjoint(keys[b]), (a, b)
    if difficulty == 0:  # split by seed alone, the same draws share problems: the check above can fail
        by_seed = [task.generate(n, seed=s, difficulty=difficulty) for n, s in ((n_train, 1), (300, 2))]
        assert len({task.split_key(e) for e in by_seed[0]} & {task.split_key(e) for e in by_seed[1]}) > 10
    # Deterministic, and the split of a problem does not depend on the seed that drew it.
    assert test == task.generate(300, seed=2, difficulty=difficulty, split="test")
    other = task.generate(300, seed=9, difficulty=difficulty, split="test")
    assert not {task.split_key(e) for e in other} & (keys["tr"] | keys["va"])


def test_split_fractions_and_canonical_problems():
    task = get_task("arithmetic")
    everything = task.generate(20_000, seed=3, difficulty=1)
    shares = collections.Counter(provenance.split_of(task.split_key(e)) for e in everything)
    for split, fraction in provenance.SPLIT_FRACTIONS.items():
        assert abs(shares[split] / len(everything) - fraction) < 0.015, shares
    # a+b and b+a are one problem (one split); a-b and b-a are two.
    ab = Example("x", "What is 12+34?", "46", "", "arithmetic", {"a": 12, "b": 34, "op": "+"})
    ba = Example("y", "What is 34+12?", "46", "", "arithmetic", {"a": 34, "b": 12, "op": "+"})
    assert task.split_key(ab) == task.split_key(ba) == "what is 12+34"
    sub = Example("z", "What is 34-12?", "22", "", "arithmetic", {"a": 34, "b": 12, "op": "-"})
    assert task.split_key(sub) == "what is 34-12"
    cd = get_task("countdown")
    e1 = Example("c", "", "", "", "countdown", {"numbers": [75, 3, 25], "target": 53})
    e2 = Example("d", "", "", "", "countdown", {"numbers": [3, 25, 75], "target": 53})
    assert cd.split_key(e1) == cd.split_key(e2)
    with pytest.raises(ValueError, match="split='dev'"):
        task.generate(3, seed=0, split="dev")


def test_normalise_question_golden():
    n = provenance.normalise_question
    assert n("What is  12 + 34 ?") == n("what is 12+34") == n("WHAT IS 12+34?\n") == "what is 12+34"
    assert n("Using the numbers [75, 3, 25], make 53 with + - * /, each number at most once.") == (
        "using the numbers[75, 3, 25], make 53 with+-*/, each number at most once"
    )
    assert n("What is 7 × 8 − 2 ÷ 1?") == "what is 7*8-2/1"
    assert n("Echo  4719 .") == "echo 4719" and n("Hello!") == "hello"
    assert n("What is 12+34?") != n("What is 12+35?") and n("What is 12+34?") != n("What is 34+12?")


@pytest.mark.parametrize("name", TASKS)
def test_noisy_solutions(name):
    task = get_task(name)
    examples = task.generate(300, seed=5, difficulty=2)
    rng = random.Random(0)
    clean = [task.noisy_solution(e, rng, 0.0) for e in examples]
    assert all(s == e.solution and a == e.answer for (s, a), e in zip(clean, examples))
    noisy = [task.noisy_solution(e, rng, 1.0) for e in examples]
    assert all(not task.verify(a, e) for (_, a), e in zip(noisy, examples))
    # Noisy solutions keep the worked format and end on the (wrong) answer they give.
    for s, _ in noisy:
        assert s.endswith(".") and " So " in s
    mixed = [task.noisy_solution(e, rng, 0.3) for e in examples]
    wrong = sum(not task.verify(a, e) for (_, a), e in zip(mixed, examples)) / len(examples)
    assert 0.22 < wrong < 0.38
    assert task.noisy_solution(examples[0], random.Random(4), 1.0) == task.noisy_solution(
        examples[0], random.Random(4), 1.0
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="difficulty=9"):
        get_task("arithmetic").generate(3, seed=0, difficulty=9)
    with pytest.raises(ValueError, match="task='nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="error_rate"):
        get_task("arithmetic").noisy_solution(get_task("arithmetic").generate(1, seed=0)[0], random.Random(0), 2.0)


def test_examples_round_trip_through_dicts():
    for name in TASKS:
        e = get_task(name).generate(1, seed=0)[0]
        assert Example.from_dict(e.to_dict()) == e


def test_reasoning_gym_adapter():
    pytest.importorskip("reasoning_gym")
    task = get_task("gym:basic_arithmetic")
    examples = task.generate(20, seed=1)
    assert examples == task.generate(20, seed=1) and examples[0].question != task.generate(20, seed=2)[0].question
    for e in examples:
        assert task.verify(e.answer, e) and task.verify(e.answer, e.to_dict())
        assert not task.verify(str(int(e.answer) + 1), e) and not task.verify(None, e)
        sol, ans = task.noisy_solution(e, random.Random(0), 1.0)
        assert not task.verify(ans, e)
    train = task.generate(200, seed=1, split="train")
    test = task.generate(40, seed=2, split="test")
    assert all(provenance.question_split(e.question) == "train" for e in train)
    assert {provenance.normalise_question(e.question) for e in train}.isdisjoint(
        {provenance.normalise_question(e.question) for e in test}
    )
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset"):
        get_task("gym:no_such_dataset")


def test_arithmetic_demo_difficulty_zero():
    task = get_task("arithmetic")
    examples = task.generate(200, seed=4, difficulty=0)
    for e in examples:
        assert e.meta["op"] == "+" and 10 <= e.meta["a"] <= 99 and 10 <= e.meta["b"] <= 99
        assert task.verify(e.answer, e) and not task.verify(str(int(e.answer) + 1), e)
        assert e.solution.endswith(f"={e.answer}.")
    with pytest.raises(ValueError, match="difficulty=-1"):
        task.generate(3, seed=0, difficulty=-1)


def test_arithmetic_tiny_demo_difficulty_six_is_three_digit_addition():
    examples = get_task("arithmetic").generate(300, seed=2, difficulty=6)
    assert all(e.meta["op"] == "+" and 100 <= e.meta["a"] <= 999 and 100 <= e.meta["b"] <= 999 for e in examples)
    assert sum(e.meta["a"] + e.meta["b"] >= 1000 for e in examples) > 100  # many results gain a fourth digit


@pytest.mark.parametrize("difficulty", [2, 3, 6])
def test_rechecked_solutions_catch_and_fix_their_slip(difficulty):
    task = get_task("arithmetic")
    rng = random.Random(0)
    marker = " Wait, let me re-check: "
    for e in task.generate(200, seed=6, difficulty=difficulty):
        text, answer = task.rechecked_solution(e, rng)
        assert answer == e.answer and text.endswith(f" So {e.meta['a']}{e.meta['op']}{e.meta['b']}={e.answer}.")
        assert text.count(marker) == 1, text
        before, after = text.split(marker)
        slipped = before.rsplit(". ", 1)[-1] if ". " in before else before
        fixed = after.split(". ", 1)[0]
        # The re-check redoes the same column (same left-hand side) with a different, correct result ...
        assert slipped.split("=")[0] == fixed.split("=")[0] and slipped.rstrip(".") != fixed.rstrip("."), text
        # ... and dropping the slipped step and the re-check marker leaves exactly the worked solution.
        assert before[: len(before) - len(slipped)] + after == e.solution, text


def test_direct_solutions_are_one_step_and_wrong_at_the_set_rate():
    task = get_task("arithmetic")
    examples = task.generate(400, seed=8, difficulty=6)
    rng = random.Random(1)
    for e in examples[:50]:
        assert task.direct_solution(e, rng, 0.0) == (f"{e.meta['a']}+{e.meta['b']}={e.answer}.", e.answer)
        text, answer = task.direct_solution(e, rng, 1.0)
        assert not task.verify(answer, e) and text == f"{e.meta['a']}+{e.meta['b']}={answer}."
        assert sum(x != y for x, y in zip(answer.zfill(5), e.answer.zfill(5))) == 1  # one digit off by one
    wrong = sum(not task.verify(task.direct_solution(e, rng, 0.3)[1], e) for e in examples) / len(examples)
    assert 0.23 < wrong < 0.37


def test_checked_direct_solution_guesses_then_works_the_columns():
    task = get_task("arithmetic")
    for e in task.generate(50, seed=4, difficulty=6):
        for error_rate in (0.0, 1.0):
            text, answer = task.checked_direct_solution(e, random.Random(e.id), error_rate)
            guess, _ = task.direct_solution(e, random.Random(e.id), error_rate)  # the same draw
            assert text == f"{guess} Wait, let me re-check: {task.worked_solution(e)}" and answer == e.answer
            assert text.endswith(f"So {e.meta['a']}+{e.meta['b']}={e.answer}.")
            assert (guess == f"{e.meta['a']}+{e.meta['b']}={e.answer}.") == (error_rate == 0.0)


def test_pretraining_corpus_mixes_styles_at_the_set_rates():
    task = get_task("arithmetic")
    kw = dict(seed=0, difficulty=6, template="short", format_rate=0.5, error_rate=0.2)
    records = corpus.pretraining_records(
        task, 3000, direct_rate=0.4, direct_error_rate=0.5, recheck_rate=0.2, checked_direct_rate=0.15, **kw
    )
    gold = {e.id: e for e in task.generate(3000, seed=0, difficulty=6, split="train")}
    styles = {"direct": [], "recheck": [], "checked_direct": [], "worked": []}
    guesses_right = []
    for r in records:
        tagged = r["response"].startswith(" <think> ")
        m = re.search(r"<answer> (\d+) </answer>$" if tagged else r"The answer is (\d+)\.$", r["response"])
        guess = re.match(r" (?:<think> )?(\d+)\+(\d+)=(\d+)\. Wait, let me re-check: ", r["response"])
        if guess:  # a one-step answer, then the columns worked out: the re-check's result is the answer
            style = "checked_direct"
            guesses_right.append(task.verify(guess.group(3), gold[r["id"]]))
        else:
            style = "recheck" if "re-check" in r["response"] else "worked" if " So " in r["response"] else "direct"
        styles[style].append((tagged, task.verify(m.group(1), gold[r["id"]])))
    shares = {s: len(v) / len(records) for s, v in styles.items()}
    assert abs(shares["direct"] - 0.4) < 0.04 and abs(shares["recheck"] - 0.2) < 0.03, shares
    assert abs(shares["checked_direct"] - 0.15) < 0.03, shares
    for style, rows in styles.items():  # the R1 tags wrap every style about equally often
        assert abs(np.mean([t for t, _ in rows]) - 0.5) < 0.08, style
    accuracy = {s: np.mean([ok for _, ok in v]) for s, v in styles.items()}
    assert accuracy["recheck"] == 1.0 and abs(accuracy["direct"] - 0.5) < 0.06 and abs(accuracy["worked"] - 0.8) < 0.05
    # The re-checked guesses are as often wrong as the direct answers; the re-check's answer is always right.
    assert accuracy["checked_direct"] == 1.0 and abs(np.mean(guesses_right) - 0.5) < 0.1
    # Without styles the corpus is the worked-solution corpus it always was (no extra random draws).
    plain = corpus.pretraining_records(task, 50, **kw)
    assert plain == corpus.pretraining_records(task, 50, direct_rate=0.0, recheck_rate=0.0, **kw)
    assert all(" So " in r["response"] and "re-check" not in r["response"] for r in plain)
    with pytest.raises(ValueError, match="data.direct_rate=0.7"):
        corpus.pretraining_records(task, 5, direct_rate=0.7, recheck_rate=0.4, **kw)
    with pytest.raises(ValueError, match=r"data.checked_direct_rate=0.5: their sum must be at most 1"):
        corpus.pretraining_records(task, 5, direct_rate=0.6, checked_direct_rate=0.5, **kw)
    with pytest.raises(ValueError, match="task 'countdown' has only worked solutions"):
        corpus.pretraining_records(get_task("countdown"), 5, direct_rate=0.5, **kw)
    with pytest.raises(ValueError, match="task 'countdown' has only worked solutions"):
        corpus.pretraining_records(get_task("countdown"), 5, checked_direct_rate=0.5, **kw)


def test_reflection_kinds_tell_a_checked_guess_from_a_checked_step():
    """benchmarks/studies/reflection_kinds.py, on hand-written completions for 624+949=1573."""
    task = get_task("arithmetic")
    rec = {"id": "q", "answer": "1573"}
    cols = "4+9=13, write 3, carry 1. 2+4+1=7, write 7. 6+9=15, write 5, carry 1. write 1. So 624+949=1573."
    texts = [
        f"<think> 624+949=1563. Wait, let me re-check: {cols} </think> <answer> 1573 </answer>",  # wrong guess, fixed
        f"624+949=1573. Wait, let me re-check: {cols} The answer is 1573.",  # right guess, confirmed
        "<think> 4+9=13, write 3, carry 1. 2+4+1=7, write 7. Wait, let me re-check: 2+4+1=7, write 7. 6+9=15, "
        "write 5, carry 1. write 1. So 624+949=1573. </think> <answer> 1573 </answer>",  # a step confirmed
        "<think> 4+9=13, write 3, carry 1. 2+4+1=8, write 8. Wait, let me re-check: 2+4+1=7, write 7. 6+9=15, "
        "write 5, carry 1. write 1. So 624+949=1573. </think> <answer> 1573 </answer>",  # a step fixed
        "<think> 624+949=1563. </think> <answer> 1563 </answer>",
        f"<think> {cols} </think> <answer> 1573 </answer>",
    ]
    samples = [{"id": "q", "completion": t, "correct": i != 4} for i, t in enumerate(texts)]
    got = reflection_kinds.kinds(samples, [rec], task)
    assert got == {
        "samples": 6, "guess, re-checked": 2, "guess, re-checked: guess wrong": 1,
        "guess, re-checked: guess wrong, answer right": 1, "step, re-checked": 2,
        "step, re-checked: the step changed": 1, "direct": 1, "worked": 1,
    }
