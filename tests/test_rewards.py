"""Rewards: answer extraction and verification, format, language consistency, overlong, reward-model hook, and
the composition's handling of errors, NaN and timeouts (from the main thread and from a worker thread)."""

import random
import threading
import time

import numpy as np
import pytest

from r1jax.data.tasks import get_task
from r1jax.rewards import (
    RewardSpec,
    accuracy_reward,
    check_answer,
    extract_answer,
    format_reward,
    gym_score_reward,
    language_consistency,
    language_consistency_reward,
    make_reward_fn,
    overlong_penalty,
    parse_reward_specs,
    reward_model_reward,
)

# ----------------------------------------------------------------------------- helpers used by name in workers


def sleepy_reward(completions, *, seconds=10.0):
    time.sleep(seconds)
    return [1.0] * len(completions)


def picky_reward(completions):
    """Raises on 'boom', NaN on 'nan', None on 'none', else the length of the text."""
    out = []
    for c in completions:
        if c == "boom":
            raise RuntimeError("boom")
        out.append({"nan": float("nan"), "none": None}.get(c, float(len(c))))
    return out


# ----------------------------------------------------------------------------- extraction and accuracy


def test_extract_answer():
    assert extract_answer("<think>1+1</think> <answer> 2 </answer>") == "2"
    assert extract_answer("<answer>1</answer> then <answer>3</answer>") == "3"
    assert extract_answer("<answer>so \\boxed{\\frac{1}{2}}</answer>") == "\\frac{1}{2}"
    assert extract_answer("the answer is \\boxed{\\frac{a}{\\sqrt{b}}} done") == "\\frac{a}{\\sqrt{b}}"
    assert extract_answer("we get 3, then 1,234.5 apples") == "1234.5"
    assert extract_answer("no digits here") is None
    assert extract_answer("it is 7", methods=("answer_tag", "boxed")) is None
    assert extract_answer("\\boxed{unclosed 5") == "5"


@pytest.mark.parametrize(
    "pred, gold, equal",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "50\\%", True),
        ("50\\%", "0.5", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\{2, 1\\}", "\\{1,2\\}", True),
        ("(1, 2]", "(1,2]", True),
        ("42", "42", True),
        ("1,000", "1000", True),
        ("42", "43", False),
        ("(x+1)^2", "x^2+1", False),
        ("[1, 2]", "(1,2]", False),
        ("\\frac{1}{3}", "0.5", False),
        (None, "42", False),
        ("", "42", False),
    ],
)
def test_check_answer(pred, gold, equal):
    assert check_answer(pred, gold) is equal


def test_accuracy_reward():
    completions = [
        "<think>half</think><answer>\\frac{1}{2}</answer>",
        "<think>hmm</think><answer>43</answer>",
        "I have no idea",
        "<think>..</think><answer>42</answer>",
    ]
    assert accuracy_reward(completions, ["0.5", "42", "42", None]) == [1.0, 0.0, 0.0, None]
    # `prefix` (prompt ends with '<think>') does not change extraction of the answer.
    assert accuracy_reward(["x</think><answer>7</answer>"], ["7"], prefix="<think>") == [1.0]


def test_accuracy_uses_the_task_verifier():
    task = get_task("countdown")
    e = task.generate(1, seed=0)[0]
    other = e.answer.replace("+", "-", 1) if "+" in e.answer else e.answer + "+1"
    got = accuracy_reward(
        [f"<answer>{e.answer}</answer>", f"<answer>{other}</answer>"], [e.answer] * 2, examples=[e, e]
    )
    assert got == [1.0, float(task.verify(other, e))] and got[1] == 0.0
    # A record dict as the data pipeline passes it: its 'task' field picks the verifier.
    record = {"question": e.question, "answer": e.answer, "task": "countdown"}
    commuted = "+".join(reversed(e.answer.split("+"))) if "(" not in e.answer and "-" not in e.answer else e.answer
    assert accuracy_reward([f"<answer>{commuted}</answer>"], [e.answer], examples=[record]) == [1.0]


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "text, strict, lenient",
    [
        ("<think>a</think><answer>b</answer>", 1.0, 1.0),
        ("<think>\nreason\n</think>\n<answer>\n4\n</answer>\n", 1.0, 1.0),
        ("<think>a</think><answer>b</answer> trailing words", 0.0, 1.0),
        ("preamble <think>a</think><answer>b</answer>", 0.0, 1.0),
        ("<think><think>a</think></think><answer>b</answer>", 0.0, 1.0),
        ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0, 1.0),
        ("<think>a</think>", 0.0, 0.0),
        ("<answer>b</answer>", 0.0, 0.0),
        ("<think>a<answer>b</answer></think>", 0.0, 0.0),
        ("<answer>b</answer><think>a</think>", 0.0, 0.0),
        ("<think> </think><answer>b</answer>", 0.0, 1.0),
        ("<think>a</think><answer></answer>", 0.0, 1.0),
        ("", 0.0, 0.0),
    ],
)
def test_format_reward(text, strict, lenient):
    assert format_reward([text]) == [strict]
    assert format_reward([text], mode="lenient") == [lenient]


def test_format_reward_prefix():
    completion = "reasoning here</think><answer>3</answer>"
    assert format_reward([completion]) == [0.0]
    assert format_reward([completion], prefix="<think>") == [1.0]
    assert format_reward(["<think>again</think><answer>3</answer>"], prefix="<think>") == [0.0]


# ----------------------------------------------------------------------------- language consistency


def test_language_consistency():
    assert language_consistency("First add the units, then carry.", "en") == 1.0
    # 4 English words, 4 Han characters -> half.
    assert language_consistency("First add 所以答案 the units", "en") == pytest.approx(0.5)
    assert language_consistency("First add 所以答案 the units", "zh") == pytest.approx(0.5)
    assert language_consistency("Сначала сложим units", "ru") == pytest.approx(2 / 3)
    assert language_consistency("7+5=12, 4+8+1=13. \\frac{1}{2}", "en") == 1.0  # no letters: nothing off-language
    assert language_consistency("これは test です", "ja") == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="language='xx'"):
        language_consistency("abc", "xx")


def test_language_reward_scores_only_the_think_block():
    completions = ["<think>we add 所以</think><answer>答案 答案 答案</answer>", "no tags at all 中文"]
    got = language_consistency_reward(completions)
    assert got == pytest.approx([2 / 4, 4 / 6])
    got = language_consistency_reward(completions, examples=[{"language": "zh"}, {"language": None}])
    assert got == pytest.approx([2 / 4, 4 / 6])
    assert language_consistency_reward(["我们 add</think><answer>1</answer>"], prefix="<think>") == pytest.approx(
        [1 / 3]
    )


# ----------------------------------------------------------------------------- overlong, reward model


def test_overlong_penalty_matches_dapo():
    # L_max=100, L_cache=20: 0 up to 80, linear to -1 at 100, -1 beyond.
    got = overlong_penalty([10, 80, 81, 90, 100, 101], max_length=100, buffer=20)
    assert got == pytest.approx([0.0, 0.0, -0.05, -0.5, -1.0, -1.0])
    with pytest.raises(ValueError, match="buffer=0"):
        overlong_penalty([1], max_length=100, buffer=0)


def test_reward_model_hook():
    seen = {}

    def scorer(prompts, texts):
        seen["texts"] = texts
        return [float(len(t)) if t != "bad" else float("nan") for t in texts]

    comps = ["<think>long reasoning</think>ok", "bad", "plain"]
    assert reward_model_reward(comps, prompts=["p"] * 3, scorer=scorer) == [31.0, None, 5.0]
    assert reward_model_reward(comps, prompts=["p"] * 3, scorer=scorer, summary_only=True) == [2.0, None, 5.0]
    assert seen["texts"] == ["ok", "bad", "plain"]


# ----------------------------------------------------------------------------- composition


def test_compose_weights_and_invalid_mask():
    specs = [
        RewardSpec("test_rewards:picky_reward", weight=2.0, executor="thread", key="picky"),
        RewardSpec("format", weight=0.5),
        RewardSpec("language", weight=0.0),  # logged only
    ]
    comps = ["<think>a</think><answer>b</answer>", "boom", "nan", "none", "xyz"]
    with make_reward_fn(specs) as fn:
        out = fn(["q"] * 5, comps, [{"answer": "b"}] * 5)
    assert out.valid.tolist() == [True, False, False, False, True]
    np.testing.assert_allclose(out.rewards, [2 * 34 + 0.5, 0, 0, 0, 2 * 3 + 0])
    assert np.isnan(out.per_reward["picky"][1:4]).all() and out.per_reward["format"].tolist() == [1, 0, 0, 0, 0]
    assert (
        out.stats["reward/errors"] == 1 and out.stats["reward/nonfinite"] == 1 and out.stats["reward/unscorable"] == 1
    )
    assert out.stats["reward/valid_frac"] == pytest.approx(0.4)
    assert "boom" in fn.last_errors["picky"]


def test_compose_accuracy_on_a_task_batch():
    task = get_task("arithmetic")
    examples = task.generate(4, seed=0)
    comps = [f"<think>{e.solution}</think><answer>{e.answer}</answer>" for e in examples]
    comps[1] = comps[1].replace(f"<answer>{examples[1].answer}", f"<answer>{int(examples[1].answer) + 1}")
    comps[2] = "no format, answer " + examples[2].answer
    with make_reward_fn("accuracy=1,format=0.5") as fn:
        out = fn([e.question for e in examples], comps, [e.to_dict() for e in examples])
    np.testing.assert_allclose(out.rewards, [1.5, 0.5, 1.0, 1.5])
    assert out.valid.all() and out.stats["reward/accuracy/mean"] == 0.75


def test_math_verify_runs_off_the_main_thread():
    spec = RewardSpec("accuracy", executor="thread", timeout_s=30)
    comps = ["<answer>\\frac{1}{2}</answer>", "<answer>(x+1)^2</answer>", "<answer>0.4</answer>"]
    with make_reward_fn([spec]) as fn:
        out = fn(["q"] * 3, comps, [{"answer": "0.5"}, {"answer": "x^2+2x+1"}, {"answer": "50\\%"}])
    assert out.per_reward["accuracy"].tolist() == [1.0, 1.0, 0.0] and out.stats["reward/errors"] == 0


def _timed_call(fn, *args):
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_hung_reward_returns_within_timeout(executor):
    timeout = 0.5
    specs = [
        RewardSpec(
            "test_rewards:sleepy_reward", timeout_s=timeout, executor=executor, kwargs={"seconds": 10 * timeout}
        ),
        RewardSpec("format", weight=1.0),
    ]
    comps = ["<think>a</think><answer>b</answer>", "x"]
    with make_reward_fn(specs, num_processes=2) as fn:
        assert fn.wait_ready()
        out, elapsed = _timed_call(fn, ["q"] * 2, comps)
        assert elapsed < timeout + 1.0
        assert not out.valid.any() and out.stats["reward/timeouts"] == 2
        np.testing.assert_array_equal(out.per_reward["format"], [1.0, 0.0])
        # From a worker thread too (math-verify's signal-based timeout would fail there).
        assert fn.wait_ready()  # killed workers replaced, so this call times out in a worker, not in the queue
        box = {}
        thread = threading.Thread(target=lambda: box.update(r=_timed_call(fn, ["q"] * 2, comps)))
        thread.start()
        thread.join(timeout=timeout + 5)
        out2, elapsed2 = box["r"]
        assert elapsed2 < timeout + 1.0 and out2.stats["reward/timeouts"] == 2


def test_process_pool_recovers_after_timeouts():
    specs = [RewardSpec("test_rewards:sleepy_reward", timeout_s=0.3, executor="process", kwargs={"seconds": 0.0})]
    with make_reward_fn(specs, num_processes=1) as fn:
        fn.wait_ready()
        slow = RewardSpec("test_rewards:sleepy_reward", timeout_s=0.3, executor="process", kwargs={"seconds": 5})
        fn.specs = (slow,)
        assert fn(["q"], ["x"]).stats["reward/timeouts"] == 1
        assert fn._processes.restarts == 1
        fn.specs = specs
        # Until the replacement is up, calls time out (unscorable) rather than stall the step; then all is well.
        assert fn.wait_ready()
        out = fn(["q"] * 3, ["a", "b", "c"])
        assert out.valid.all() and out.stats["reward/total_mean"] == 1.0


def test_parse_reward_specs():
    specs = parse_reward_specs("accuracy=1, format=0.25,language")
    assert [(s.name, s.weight) for s in specs] == [("accuracy", 1.0), ("format", 0.25), ("language", 1.0)]
    assert specs[0].info.executor == "process" and specs[1].info.executor == "thread"
    with pytest.raises(ValueError, match="reward name='acurracy'"):
        parse_reward_specs("acurracy=1")
    with pytest.raises(ValueError, match="duplicate"):
        parse_reward_specs("format=1,format=2")
    with pytest.raises(ValueError, match="executor='gpu'"):
        RewardSpec("format", executor="gpu")


# ----------------------------------------------------------------------------- reasoning-gym scoring

# Datasets whose scorer works from the answer alone, needs the entry's metadata, or rejects its own gold without it.
GYM_TASKS = (
    "basic_arithmetic", "decimal_arithmetic", "chain_sum", "leg_counting", "prime_factorization", "gcd",
    "advanced_geometry", "calendar_arithmetic", "complex_arithmetic", "cryptarithm", "word_sorting", "number_format",
    "time_intervals", "bitwise_arithmetic", "fraction_simplification", "number_sorting", "palindrome_generation",
    "mini_sudoku", "spell_backward",
)  # fmt: skip


def test_gym_records_are_scored_by_their_own_config():
    rg = pytest.importorskip("reasoning_gym")
    config = dict(min_num_decimal_places=1, max_num_decimal_places=1)
    records = [e.to_dict() for e in get_task("gym:decimal_arithmetic", **config).generate(20, seed=5)]
    assert records[0]["meta"]["gym"] == {"dataset": "decimal_arithmetic", "config": config}
    own = rg.create_dataset("decimal_arithmetic", size=20, seed=5, **config)
    near = [f"{float(r['answer']) + 0.05:.6f}" for r in records]  # within one unit of the 1st decimal place
    assert all(own.score_answer(a, own[i]) == 1.0 for i, a in enumerate(near))
    completions = [f"<answer>{a}</answer>" for a in near]
    answers = [r["answer"] for r in records]
    # accuracy_reward builds the task with its default config (3 decimal places); the record's config rules.
    assert accuracy_reward(completions, answers, examples=records) == [1.0] * 20
    assert (
        accuracy_reward([f"<answer>{float(a) + 0.3:.6f}</answer>" for a in answers], answers, examples=records)
        == [0.0] * 20
    )
    default = rg.create_dataset("decimal_arithmetic", size=1, seed=0)
    assert not any(default.score_answer(a, own[i]) == 1.0 for i, a in enumerate(near))  # the default rules differ
    assert gym_score_reward(completions, examples=records) == [1.0] * 20
    assert gym_score_reward(completions[:1], examples=[{"task": "arithmetic"}]) == [None]


@pytest.mark.parametrize("name", GYM_TASKS)
def test_gym_verify_agrees_with_score_answer(name):
    rg = pytest.importorskip("reasoning_gym")
    task = get_task(f"gym:{name}")
    examples = task.generate(4, seed=3)
    ds = rg.create_dataset(name, size=4, seed=3)
    for i, e in enumerate(examples):
        entry = ds[i]
        assert e.meta["entry"]["answer"] == entry["answer"]
        for pred in (e.answer, examples[(i + 1) % 4].answer):  # the gold, and another item's (wrong) answer
            ref = ds.score_answer(pred, entry) >= 1.0
            assert task.verify(pred, e) == task.verify(pred, e.to_dict()) == task.verify(pred, e.answer) == ref, pred
        assert not e.solution.endswith("None") and e.solution.endswith(f"{entry['answer']}.")
        _, wrong = task.noisy_solution(e, random.Random(i), 1.0)
        assert ds.score_answer(wrong, entry) < 1.0 and not task.verify(wrong, e)


def test_gym_items_without_a_gold_answer_get_no_solutions():
    pytest.importorskip("reasoning_gym")
    task = get_task("gym:propositional_logic")
    examples = task.generate(5, seed=0)
    assert all(e.answer == "" and e.solution == "" and e.meta["entry"]["answer"] is None for e in examples)
    with pytest.raises(ValueError, match="no single gold answer"):
        task.worked_solution(examples[0])
    with pytest.raises(ValueError, match="no single gold answer"):
        task.noisy_solution(examples[0], random.Random(0), 0.5)
    assert not task.verify("", examples[0])  # still scored (by validity) for RL


def test_gym_wrong_solutions_are_wrong_for_palindromic_answers():
    rg = pytest.importorskip("reasoning_gym")
    task = get_task("gym:prime_factorization")
    examples = task.generate(50, seed=0)
    ds = rg.create_dataset("prime_factorization", size=50, seed=0)
    # Reversed text is still right whenever it is the same factors ('3 × 3', or any order of them).
    assert sum(ds.score_answer(e.answer[::-1], ds[i]) == 1.0 for i, e in enumerate(examples)) >= 5
    for i, e in enumerate(examples):
        _, wrong = task.noisy_solution(e, random.Random(i), 1.0)
        assert ds.score_answer(wrong, ds[i]) < 1.0 and not task.verify(wrong, e), (e.answer, wrong)
