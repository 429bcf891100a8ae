"""The built-in default end to end, shortened: stage 0 → base eval → R1-Zero → final eval, in one process.

The full demo (`r1jax demo`) is measured in benchmarks/RESULTS.md; this keeps its shape and checks that GRPO
learns: with a fixed seed, the mean reward of the last RL steps is above that of the first ones.
"""

import json
import os

import numpy as np
import pytest

from r1jax import demo, evals
from r1jax.metrics import read_history

SHORT = [
    "pretrain.num_steps=150",
    "pretrain.data.num_examples=4000",
    "pretrain.seq_len=128",
    "pretrain.batch_size=8",
    "pretrain.checkpoint.every=1000",
    "r1_zero.rl.num_steps=10",
    "r1_zero.rl.prompts_per_step=8",
    "r1_zero.rl.group_size=4",
    "r1_zero.optim.learning_rate=3e-4",
    "r1_zero.optim.decay=constant",
    "r1_zero.eval.num_prompts=16",
    "r1_zero.eval.num_samples=2",
    "r1_zero.checkpoint.every=100",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo"))
    return workdir, demo.run_demo(workdir, seed=0, overrides=SHORT)


def test_reward_rises(demo_run):
    workdir, _ = demo_run
    rewards = [h["rl/reward_mean"] for h in read_history(os.path.join(workdir, "r1_zero")) if "rl/reward_mean" in h]
    assert len(rewards) == 10
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert last > first + 0.05, rewards


def test_results_json_and_artifacts(demo_run):
    workdir, results = demo_run
    with open(os.path.join(workdir, "demo_results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    for model in ("base", "final"):
        assert set(saved[model]) == set(evals.METRICS)
        for key in ("pass@1", "cons@k", "greedy_accuracy", "format_rate"):
            assert 0.0 <= saved[model][key] <= 1.0
        assert saved[model]["mean_length"] > 0
    assert saved["k"] == 2 and saved["seed"] == 0
    assert set(saved["wall_time_s"]) == {"stage0_s", "eval_base_s", "r1_zero_s", "eval_final_s"}
    assert os.path.exists(os.path.join(workdir, "demo_curves.png"))
    assert os.listdir(os.path.join(workdir, "r1_zero", "tb"))
    # The format is learned first: the final policy uses the template more often than the base model.
    assert saved["final"]["format_rate"] > saved["base"]["format_rate"]


def test_second_run_reuses_stage0(demo_run, capsys):
    workdir, _ = demo_run
    mtime = os.path.getmtime(os.path.join(workdir, "stage0", "model", "model.safetensors"))
    demo.run_demo(workdir, seed=0, overrides=SHORT)
    assert "reusing the base model" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(workdir, "stage0", "model", "model.safetensors")) == mtime


def test_majority_vote_counts_missing_answers():
    assert evals.majority_vote(["3", None, None, "4"]) is None
    assert evals.majority_vote(["3", "4", "4", None]) == "4"
    assert evals.majority_vote(["5", "3", "3", "5"]) == "5"  # ties go to the first seen
    assert evals.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert evals.pass_at_k(4, 4, 2) == 1.0
