"""The evaluation metrics on hand-written completions whose values are known exactly, and the bootstrap intervals
against cases with a known answer (zero width, the binomial standard error, coverage, seed variation)."""

import itertools
import math

import numpy as np
import pytest

from r1jax import evals
from r1jax.data.tasks import get_task

# Four prompts × k = 4 samples. Per sample: formatted (F), strict-correct (S: formatted and the tagged answer
# right), lenient-correct (L: the answer found anywhere), reflective (R).
RECORDS = [
    {"id": "a", "question": "6*7?", "answer": "42"},
    {"id": "b", "question": "3+4?", "answer": "7"},
    {"id": "c", "question": "1 over 2?", "answer": "1/2"},
    {"id": "d", "question": "1+2?", "answer": "3"},
]
COMPLETIONS = [
    # a: three equivalent spellings of 42 in format, one right answer in prose
    "<think>6*7. Wait, let me re-check: 42.</think> <answer>42</answer>",  # F S L R
    "<think>6*7</think> <answer>42.</answer>",  # F S L
    "<think>six sevens, 所以</think> <answer>$42$</answer>",  # F S L; two English words, two Han characters
    "6*7 is 42.",  # L only (no tags)
    # b: a 2-2 tie between 8 and 7; the group seen first (8) wins the vote, so cons@k is wrong
    "<think>a</think> <answer>8</answer>",  # F
    "<think>b</think> <answer>7</answer>",  # F S L
    "<think>c</think> <answer>8.</answer>",  # F
    "<think>d, let me verify</think> <answer>7</answer>",  # F S L R
    # c: the right answer in tags but out of format; 0.5 and \frac{1}{2} tie with "no answer", which is seen first
    "<answer>1/2</answer>",  # L only (answer tag without the <think> block)
    "<think>x</think> <answer>0.5</answer>",  # F S L
    "<think>y</think> <answer>\\frac{1}{2}</answer>",  # F S L (math-verify)
    "I think it is 3",  # nothing
    # d: 3 and $3$ are one answer and out-vote 4 and 5 (on raw strings all four would tie and 4 would win)
    "<think>p, as awaited</think> <answer>4</answer>",  # F ('awaited' is not a re-check)
    "<think>q</think> <answer>3</answer>",  # F S L
    "<think>r</think> <answer>$3$</answer>",  # F S L
    "<think>s</think> <answer>5</answer>",  # F
]
GREEDY = [
    "<think>g</think> <answer>42</answer>",  # right
    "<answer>7</answer>",  # right answer, not formatted: wrong under the strict rule
    "<think>g</think> <answer>2</answer>",  # wrong
    "<think>g</think> <answer>3</answer>",  # right
]
LENGTHS = np.arange(16)
EXPECTED = {
    "pass@1": 9 / 16,
    "format_rate": 13 / 16,
    "accuracy_given_format": 9 / 13,
    "lenient_accuracy": 11 / 16,
    "cons@k": 2 / 4,
    "pass@k": 1.0,
    "mean_length": 7.5,
    "reflection_rate": 2 / 16,
    "greedy_accuracy": 2 / 4,
    "language_consistency": 15.5 / 16,  # every chain of thought English but one, which is half Han
    "language_mixing": 1 / 16,
}


@pytest.fixture(scope="module")
def scored():
    sums, correct = evals.score_completions(COMPLETIONS, RECORDS, 4, lengths=LENGTHS, greedy_completions=GREEDY)
    return sums, correct, evals.summarize(sums)


def test_hand_written_completions_give_exact_metrics(scored):
    sums, correct, m = scored
    for name, value in EXPECTED.items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    # The decomposition the metrics exist for: strict pass@1 = format rate × accuracy among formatted answers.
    assert m["pass@1"] == pytest.approx(m["format_rate"] * m["accuracy_given_format"], abs=1e-12)
    assert m["lenient_accuracy"] >= m["pass@1"]
    # Per prompt: the cons@k votes (a right, b tie to 8, c tie to "no answer", d equivalent 3s win).
    np.testing.assert_array_equal(sums["cons@k"][0], [1, 0, 0, 1])
    np.testing.assert_array_equal(sums["accuracy_given_format"][1], [3, 4, 2, 4])
    # `correct` (the samples' verdicts) counts the tagged answer whatever the format: c's first sample is right.
    np.testing.assert_array_equal(correct[2], [True, True, True, False])


def test_every_metric_has_an_interval_around_it(scored):
    _, _, m = scored
    for name in EXPECTED:
        lo, hi = m[f"{name}_ci"]
        assert lo <= m[name] + 1e-12 and m[name] <= hi + 1e-12, (name, lo, m[name], hi)
    assert m["pass@k_ci"] == [1.0, 1.0]  # every prompt passes: no resample can differ
    assert m["pass@1_ci"][1] - m["pass@1_ci"][0] > 0.1  # 4 prompts: a wide interval


def test_cons_at_k_uses_the_task_verifier_on_equivalent_strings():
    task = get_task("arithmetic")
    rec = task.generate(1, seed=0, difficulty=0)[0].to_dict()
    gold = rec["answer"]
    comps = [f"<think>x</think> <answer>{a}</answer>" for a in (f"${gold}$", "1", f"{gold}.", "2")]
    sums, _ = evals.score_completions(comps, [rec], 4, lengths=np.ones(4))
    assert sums["cons@k"][0].tolist() == [1.0]
    assert sums["pass@1"][0].tolist() == [2.0]


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_first_seen():
    assert evals.group_equivalent(["42", "42.", "$42$", None, "41", None]) == [0, 0, 0, 1, 2, 1]
    assert evals.group_equivalent(["\\frac{1}{2}", "0.5", "1/2", "2"]) == [0, 0, 0, 1]
    assert evals.majority_vote(["4", "3", "$3$", "5"]) == "3"
    assert evals.majority_vote(["8", "7", "8.", "7"]) == "8"  # tie: the group seen first
    assert evals.majority_vote(["7", "8", "8.", "7"]) == "7"
    assert evals.majority_vote(["3", None, None, "4"]) is None  # "no answer" is a candidate
    assert evals.majority_vote([None, "3", "3", None]) is None


def test_reflection_regex():
    hits = ["Wait, let me re-check", "wait.", "I recheck the carry", "Let me check 7+5", "verify: 12",
            "Let me double-check", "re-checked", "WAIT"]
    misses = ["awaited", "the checkbox", "check", "verification", "7+5=12", "waiter"]
    assert [evals.reflects(t) for t in hits] == [True] * len(hits)
    assert [evals.reflects(t) for t in misses] == [False] * len(misses)


def test_unbiased_pass_at_k_matches_enumeration():
    for n, c, k in [(4, 1, 1), (5, 2, 2), (8, 3, 4), (6, 0, 3), (6, 6, 1), (10, 4, 7)]:
        draws = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert evals.pass_at_k(n, c, k) == pytest.approx(np.mean([any(d) for d in draws]), abs=1e-12), (n, c, k)
    with pytest.raises(ValueError, match="k=5"):
        evals.pass_at_k(4, 1, 5)


def test_bootstrap_all_equal_values_give_a_zero_width_interval():
    lo, hi = evals.bootstrap_ci(np.full(64, 0.75))
    assert lo == pytest.approx(0.75, abs=1e-12) and hi == pytest.approx(0.75, abs=1e-12)


def test_bootstrap_binomial_interval_has_the_normal_width():
    x = np.r_[np.ones(120), np.zeros(280)]  # p̂ = 0.3, n = 400
    lo, hi = evals.bootstrap_ci(x)
    assert lo < 0.3 < hi
    expected = 2 * 1.959964 * math.sqrt(0.3 * 0.7 / 400)  # 0.0898
    assert hi - lo == pytest.approx(expected, rel=0.1)
    assert evals.bootstrap_ci(x) == (lo, hi)  # seeded: the same interval every time


def test_bootstrap_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = [
        lo <= 0.3 <= hi
        for lo, hi in (evals.bootstrap_ci(rng.random(100) < 0.3, seed=i) for i in range(200))
    ]
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_bootstrap_ratio_skips_empty_denominators():
    num, den = np.array([1.0, 0.0, 2.0]), np.array([2.0, 0.0, 2.0])  # the middle prompt was never formatted
    lo, hi = evals.bootstrap_ci(num, den)
    assert 0.5 - 1e-12 <= lo <= 0.75 <= hi <= 1.0 + 1e-12
    assert all(math.isnan(v) for v in evals.bootstrap_ci(np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="must be equal"):
        evals.bootstrap_ci(np.ones(3), np.ones(4))


def test_paired_difference_interval():
    rng = np.random.default_rng(0)
    p = 200
    hard = rng.random(p) < 0.5  # prompt difficulty moves both models: pairing cancels it
    a = (np.where(hard, 1.0, 4.0) + (rng.random(p) < 0.3), np.full(p, 4.0))
    b = (np.where(hard, 1.0, 4.0), np.full(p, 4.0))
    lo, hi = evals.bootstrap_diff_ci(a, b)
    diff = evals.ratio(*a) - evals.ratio(*b)
    assert 0 < lo < diff < hi  # a is better, and the interval excludes 0
    assert hi - lo < 0.5 * (np.subtract(*evals.bootstrap_ci(*a)[::-1]) + np.subtract(*evals.bootstrap_ci(*b)[::-1]))
    assert evals.bootstrap_diff_ci(b, b) == (0.0, 0.0)
    lo, hi = evals.bootstrap_diff_ci(b, a)
    assert lo < -diff < hi < 0
    with pytest.raises(ValueError, match="same seeds"):
        evals.bootstrap_diff_ci(a, (np.ones(3), np.ones(3)))


def test_seeds_widen_the_interval_when_seeds_disagree():
    good, bad = np.ones(32), np.zeros(32)
    lo, hi = evals.bootstrap_ci(np.stack([good, bad]))
    assert lo == 0.0 and hi == 1.0  # resampling seeds: either seed alone is a possible world
    # Averaging over seeds per prompt first would hide the disagreement: every prompt is then 0.5.
    assert evals.bootstrap_ci((good + bad) / 2) == pytest.approx((0.5, 0.5), abs=1e-12)
    # One seed on a leading axis is the plain bootstrap over prompts.
    x = np.random.default_rng(0).random(50)
    assert evals.bootstrap_ci(x[None]) == evals.bootstrap_ci(x)


def test_summarize_pools_seeds(scored):
    sums, _, one = scored
    two = evals.summarize([sums, sums])
    assert two["pass@1"] == pytest.approx(one["pass@1"])
    flipped = {k: (v[1] - v[0] if k == "pass@1" else v[0], v[1]) for k, v in sums.items()}  # right ↔ wrong
    mixed = evals.summarize([sums, flipped])
    assert mixed["pass@1"] == pytest.approx(0.5)
    assert mixed["pass@1_ci"][1] - mixed["pass@1_ci"][0] > one["pass@1_ci"][1] - one["pass@1_ci"][0]
    as_json = {k: {"num": v[0].tolist(), "den": v[1].tolist()} for k, v in sums.items()}
    assert evals.summarize(evals.prompt_sums_from_json(as_json)) == one


def test_markdown_table_shows_intervals(scored):
    _, _, m = scored
    table = evals.markdown_table({"base": m, "final": m})
    row = next(line for line in table.splitlines() if line.startswith("| pass@1 |"))
    lo, hi = m["pass@1_ci"]
    assert row == f"| pass@1 | 0.562 [{lo:.3f}, {hi:.3f}] | 0.562 [{lo:.3f}, {hi:.3f}] |"
    assert "| mean_length | 7.5 [" in table


def test_boxed_extraction_counts_a_boxed_answer_as_formatted():
    # The Qwen-Math prompt asks for \boxed{}: there the box is the format, and tags are not required.
    comps = ["so \\boxed{7}", "it is 7", "<think>t</think> <answer>7</answer>", "\\boxed{8}"]
    sums, _ = evals.score_completions(comps, [RECORDS[1]], 4, lengths=np.ones(4), extract=("boxed",))
    m = evals.summarize(sums)
    assert (m["format_rate"], m["pass@1"], m["lenient_accuracy"]) == (0.5, 0.25, 0.75)
    assert m["cons@k"] == 0.0  # the two unboxed samples vote "no answer" and out-vote 7 and 8
