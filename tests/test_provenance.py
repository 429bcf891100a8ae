"""Provenance: data manifests, the contamination check, and the stages' data drawn from disjoint splits.

The stage test loads every tiny stage's data through the functions its trainer loads it with (each writes its
manifest as the trainer does), at the tiny presets' real sizes, and asserts that no evaluation question is in
any training manifest; a planted overlap makes the same check fail.
"""

import collections
import json
import logging
import os

import pytest

from r1jax import config_lib, rollouts
from r1jax.data import preferences, provenance
from r1jax.tokenizer import apply_template
from r1jax.trainers import rejection_sampling, reward_model, sft

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO, "experiments", "pipeline.py")


def test_manifest_holds_one_line_per_distinct_normalised_question(tmp_path):
    stage = str(tmp_path / "stage")
    provenance.record(stage, ["What is 1+2?", "what is 1 + 2", "Hi!"], split="train", role="train", source="rl")
    provenance.record(stage, ["Hi!"], split="train", role="train", source="general")
    provenance.record(stage, ["What is 5+5?"], split="test", role="eval", source="eval")
    rows = provenance.read_manifest(os.path.join(stage, "data_manifest.jsonl"))
    h = provenance.sha256_hex
    assert rows == [
        {"question": "hi", "sha256": h("hi"), "split": "train", "role": "train", "count": 2,
         "sources": {"general": 1, "rl": 1}},
        {"question": "what is 1+2", "sha256": h("what is 1+2"), "split": "train", "role": "train", "count": 2,
         "sources": {"rl": 2}},
        {"question": "what is 5+5", "sha256": h("what is 5+5"), "split": "test", "role": "eval", "count": 1,
         "sources": {"eval": 1}},
    ]
    # Recording a data set again (a resumed run) replaces its counts instead of adding to them.
    provenance.record(stage, ["What is 1+2?", "Hi!"], split="train", role="train", source="rl")
    counts = {(r["question"], r["role"]): r["count"] for r in provenance.read_manifest(provenance.manifest_path(stage))}
    assert counts == {("hi", "train"): 2, ("what is 1+2", "train"): 1, ("what is 5+5", "eval"): 1}
    with pytest.raises(ValueError, match="role='dev'"):
        provenance.record(stage, ["x"], split="train", role="dev")
    with pytest.raises(ValueError, match="split='dev'"):
        provenance.record(stage, ["x"], split="dev", role="train")


def test_check_disjoint_fails_on_a_planted_overlap(tmp_path):
    provenance.record(str(tmp_path / "stage0"), ["What is 1+2?", "What is 3+4?"], split="train", role="train")
    provenance.record(str(tmp_path / "r1_zero"), ["What is 5+6?"], split="train", role="train")
    provenance.record(str(tmp_path / "r1_zero"), ["What is 7+8?"], split="test", role="eval")
    assert provenance.check_disjoint(str(tmp_path)) == {"manifests": 2, "train_questions": 3, "eval_questions": 1}
    # An evaluation question that a stage trained on, written differently: found, named, with its stages.
    provenance.record(str(tmp_path / "cold_start"), ["what is 7 + 8"], split="train", role="train")
    with pytest.raises(provenance.ContaminationError, match=r"1 evaluation questions") as err:
        provenance.check_disjoint(str(tmp_path))
    assert err.value.overlap == {"what is 7+8": {"train": ["cold_start"], "eval": ["r1_zero"]}}
    assert "'what is 7+8' (trained in cold_start; evaluated in r1_zero)" in str(err.value)
    with pytest.raises(ValueError, match="no data_manifest.jsonl"):
        provenance.check_disjoint(str(tmp_path / "empty"))


def _tiny_stage_manifests(workdir: str):
    """Every tiny stage's training and evaluation data, loaded as its trainer loads it (manifests written)."""
    c = config_lib.load_config(PIPELINE + ":tiny")
    d = lambda stage: os.path.join(workdir, stage)
    for stage in ("stage0", "cold_start"):
        sft.load_records(c[stage], d(stage))
    for stage in ("r1_zero", "reasoning_rl", "general_rl"):
        rollouts.load_splits(c[stage], d(stage))
    rs = c.rejection_sampling
    prompts = rejection_sampling.load_prompt_records(rs, d("rejection_sampling"))
    general = rejection_sampling.non_reasoning_records(rs, len(prompts), d("rejection_sampling"))
    # The rejection-sampling set (its prompts, templated, as rejection_sft and distill read data.jsonl).
    data = os.path.join(workdir, "data.jsonl")
    with open(data, "w") as f:
        for i, r in enumerate(prompts):
            f.write(json.dumps({"id": f"rs-{i}", "prompt": apply_template(r["question"], rs.template),
                                "response": " <answer> 1 </answer>"}) + "\n")
        for r in general:
            f.write(json.dumps(r) + "\n")
    for stage in ("rejection_sft", "distill"):
        c[stage].data.files = (data,)
        sft.load_records(c[stage], d(stage))
    reward_model.load_pairs(c.reward_model, d("reward_model"))
    # The pipeline's held-out evaluation of every stage (r1jax.evals.evaluate_model_dir records these prompts).
    _, held_out, _ = rollouts.load_splits(c.eval)
    provenance.record(d("eval"), [r["question"] for r in held_out[: c.eval.eval.num_prompts]],
                      split=c.eval.eval.split, role="eval")
    return c


def test_tiny_stages_never_train_on_an_evaluation_question(tmp_path):
    c = _tiny_stage_manifests(str(tmp_path))
    summary = provenance.check_disjoint(str(tmp_path))
    assert summary["manifests"] == 10 and summary["eval_questions"] >= 64, summary
    rows = {
        stage: provenance.read_manifest(provenance.manifest_path(str(tmp_path / stage)))
        for stage in os.listdir(tmp_path) if os.path.isdir(tmp_path / stage)
    }
    for stage, manifest in rows.items():
        roles = collections.Counter((r["role"], r["split"]) for r in manifest)
        assert set(roles) <= {("train", "train"), ("eval", "test")}, (stage, roles)
    # Every training stage's manifest counts what it trains on: the pretraining corpus has its 24,000 examples.
    assert sum(r["count"] for r in rows["stage0"]) == c.stage0.data.num_examples
    assert {r["role"] for r in rows["r1_zero"]} == {"train", "eval"}
    # Planted: one evaluation question slipped into the cold-start data is caught.
    planted = next(r["question"] for r in rows["eval"] if r["role"] == "eval")
    provenance.record(str(tmp_path / "planted"), [planted], split="train", role="train")
    with pytest.raises(provenance.ContaminationError, match="planted"):
        provenance.check_disjoint(str(tmp_path))


def test_reward_model_held_out_pairs_share_no_pair_and_no_prompt(tmp_path):
    c = config_lib.load_config(os.path.join(REPO, "experiments", "reward_model.py") + ":tiny")
    train, held_out = reward_model.load_pairs(c, str(tmp_path))
    assert len(held_out) == round(c.data.eval_fraction * c.data.num_pairs) and len(train) + len(held_out) == (
        c.data.num_pairs
    )
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"])
    assert not {key(p) for p in train} & {key(p) for p in held_out}
    norm = provenance.normalise_question
    assert not {norm(p["prompt"]) for p in train} & {norm(p["prompt"]) for p in held_out}
    assert all(provenance.question_split(p["prompt"]) == c.data.eval_split for p in held_out)
    # Holding out a random share of one generated set, as before, shares whole pairs: the check above can fail.
    pairs = preferences.preference_pairs(c.data.num_pairs, seed=c.data.seed, split=None)
    held = set(map(key, pairs[: len(held_out)]))
    assert len(held & set(map(key, pairs[len(held_out) :]))) > 10


def test_evaluation_files_are_deduplicated_against_training_files(tmp_path, caplog):
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps({"id": f"t{i}", "question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                             for i in range(10)))
    # Two of the evaluation questions are training questions written differently.
    questions = ["What is 3 + 1 ?", "what is 7+1", "What is 20+1?", "What is 21+1?"]
    evals.write_text("".join(json.dumps({"id": f"e{i}", "question": q, "answer": "0"}) + "\n"
                             for i, q in enumerate(questions)))
    c = config_lib.load_config(os.path.join(REPO, "experiments", "r1_zero.py") + ":runlocal")
    c.data.train_files, c.data.eval_files = (str(train),), (str(evals),)
    with caplog.at_level(logging.WARNING):
        _, kept, _ = rollouts.load_splits(c)
    assert [r["question"] for r in kept] == ["What is 20+1?", "What is 21+1?"]
    assert "removed 2 of 4" in caplog.text


def test_an_evaluation_file_that_repeats_the_training_file_is_refused(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"t{i}", "question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                             for i in range(4)))
    c = config_lib.load_config(os.path.join(REPO, "experiments", "r1_zero.py") + ":runlocal")
    c.data.train_files = c.data.eval_files = (str(train),)
    with pytest.raises(ValueError, match=r"eval.num_prompts=4: no evaluation question is left"):
        rollouts.load_splits(c)
    c.eval.num_prompts = 0  # training without evaluation (the benchmarks): nothing to refuse
    assert rollouts.load_splits(c)[1] == []


def test_eval_split_is_validated_by_name():
    from r1jax.trainers import grpo_config

    c = config_lib.load_config(os.path.join(REPO, "experiments", "r1_zero.py") + ":runlocal")
    assert c.eval.split == "test"
    c.eval.split = "dev"
    with pytest.raises(ValueError, match="eval.split='dev'"):
        grpo_config.validate(c)


@pytest.mark.slow
def test_runlocal_pipeline_writes_a_manifest_per_stage_and_passes_the_check(tmp_path):
    """The stages themselves (2 steps each): every stage directory holds a manifest, and the check passes."""
    from r1jax import pipeline as pipeline_lib

    config = config_lib.load_config(PIPELINE + ":runlocal", ["distill.init_from_scratch=True"])
    pipeline_lib.run(config, str(tmp_path))
    for stage in config.stages:
        rows = provenance.read_manifest(provenance.manifest_path(str(tmp_path / stage)))
        assert "train" in {r["role"] for r in rows}, stage
    summary = provenance.check_disjoint(str(tmp_path))
    assert summary["manifests"] == len(config.stages)
