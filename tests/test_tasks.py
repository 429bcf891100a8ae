"""Built-in tasks: gold answers and worked solutions verify, perturbations do not, generation is seeded."""

import random
import re

import pytest

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
    assert {x.id for x in a}.isdisjoint({y.id for y in c})
    assert task.generate(30, seed=7, difficulty=2)[0].question != a[0].question or name == "countdown"


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
