"""The R1 pipeline (stages 2-6): every new experiment file runs for 2 steps in one pipeline run (one process, one
tiny base model), re-running skips finished stages, and the parts that can be wrong in a way a run would not show
are checked on their own: the rejection-sampling filters, the Bradley–Terry loss, the reward model's learning,
reward routing, and the distillation KL."""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.studies import pipeline_seeds
from r1jax import config_lib, evals, kernels, train_state
from r1jax import pipeline as pipeline_lib
from r1jax.data import corpus, preferences
from r1jax.data import tasks as tasks_lib
from r1jax.data.sft import SFTFields
from r1jax.models import get_preset, init_model
from r1jax.rewards import accuracy_reward, format_ok, summary_text, think_text
from r1jax.rewards.compose import RewardSpec, make_reward_fn
from r1jax.rewards.reward_model import RewardModelScorer
from r1jax.rewards.routing import RoutedRewards
from r1jax.tokenizer import SentencePieceTokenizer
from r1jax.trainers import distill, grpo, grpo_config, rejection_sampling, reward_model, sft

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(REPO, "experiments", "pipeline.py")
# The new stages. r1_zero, student_base and student_rl run experiments that other tests cover (R1-Zero GRPO,
# pretraining); leaving them out keeps this file within its time budget. The student is then a fresh preset.
TEST_STAGES = (
    "stage0",
    "cold_start",
    "reasoning_rl",
    "rejection_sampling",
    "rejection_sft",
    "reward_model",
    "general_rl",
    "distill",
)


def _history(stage_dir):
    with open(os.path.join(stage_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def pipeline_run(tiny_base_model, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pipeline"))
    shutil.copytree(tiny_base_model, os.path.join(workdir, "stage0", "model"))  # stage 0 is reused, not retrained
    config = config_lib.load_config(PIPELINE + ":runlocal", ["distill.init_from_scratch=True"])
    config.stages = TEST_STAGES
    result = pipeline_lib.run(config, workdir)
    return workdir, config, result


# ---------------------------------------------------------------------------------------------------------------
# The whole pipeline, 2 steps per stage


def test_pipeline_runs_every_new_stage_for_two_steps(pipeline_run):
    workdir, config, result = pipeline_run
    assert result["stages_run"].split(",") == list(TEST_STAGES[1:])  # stage0 was there already
    for stage in TEST_STAGES:
        assert pipeline_lib.is_complete(workdir, stage, config.plan[stage].export), stage
    for stage in ("cold_start", "reasoning_rl", "rejection_sft", "reward_model", "general_rl", "distill"):
        steps = [h["step"] for h in _history(os.path.join(workdir, stage))]
        assert max(steps) == 2, (stage, steps)
    # The student is the smaller preset, with the teacher's tokenizer (same vocabulary).
    with open(os.path.join(workdir, "distill", "model", "config.json")) as fh:
        student = json.load(fh)
    with open(os.path.join(workdir, "general_rl", "model", "config.json")) as fh:
        teacher = json.load(fh)
    assert student["num_hidden_layers"] == get_preset("tiny-student").num_layers < teacher["num_hidden_layers"]
    assert student["vocab_size"] == teacher["vocab_size"]


def test_rejection_sampling_writes_an_sft_set_and_filter_statistics(pipeline_run):
    workdir, config, _ = pipeline_run
    stats = json.load(open(os.path.join(workdir, "rejection_sampling", "stats.json")))
    rs = config.rejection_sampling
    assert stats["total"]["in"] == rs.data.num_prompts * rs.sampling.num_samples
    previous = stats["total"]["in"]
    for name in rejection_sampling.FILTERS:  # each filter sees what the previous one kept
        assert stats[name]["in"] == previous
        assert stats[name]["kept"] <= stats[name]["in"]
        previous = stats[name]["kept"]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "rejection_sampling", "data.jsonl"))]
    assert len(rows) == stats["data"]["num_rows"] == stats["data"]["num_reasoning"] + stats["data"]["num_non_reasoning"]
    assert stats["data"]["num_non_reasoning"] >= rs.non_reasoning.min_examples
    for row in rows:
        assert row["prompt"].startswith("User: ") and row["response"]
        if row["source"] == "non_reasoning":
            assert format_ok(row["response"])


def test_general_rl_routes_general_prompts_to_the_reward_model(pipeline_run):
    workdir, _, _ = pipeline_run
    history = _history(os.path.join(workdir, "general_rl"))
    trained = [h for h in history if "reward/reasoning/fraction" in h]
    assert len(trained) == 2
    assert all(h["reward/reasoning/fraction"] + h["reward/general/fraction"] == 1.0 for h in trained)


def test_results_table_has_a_row_per_evaluated_stage(pipeline_run):
    workdir, config, _ = pipeline_run
    results = json.load(open(os.path.join(workdir, "results.json")))
    table = open(os.path.join(workdir, "results.md")).read()
    for stage in TEST_STAGES:
        assert config.plan[stage].label in table
        if config.plan[stage].export != "model":  # the data set and the reward model are not policies
            assert stage in ("rejection_sampling", "reward_model") and "pass@1" not in results["stages"][stage]
            continue
        m = results["stages"][stage]
        # The table's figures are the stage's per-prompt sums pooled (what several seeds pool from), and pass@1
        # decomposes into format × accuracy among formatted answers.
        sums = evals.prompt_sums_from_json(m["per_prompt"])
        for key in ("pass@1", "cons@k", "format_rate", "language_consistency", "language_mixing", "mean_length"):
            assert m[key] == pytest.approx(evals.ratio(*sums[key]), abs=1e-12), (stage, key)
        if m["format_rate"] > 0:
            assert m["pass@1"] == pytest.approx(m["format_rate"] * m["accuracy_given_format"], abs=1e-12), stage
        assert 0 < m["mean_length"] <= 16  # runlocal samples at most 16 tokens
    assert results["stages"]["distill"]["num_params"] < results["stages"]["general_rl"]["num_params"]
    rm = results["reward_model"]  # a share of the held-out pairs: a whole number of them
    assert rm["eval/pairwise_accuracy"] * rm["data/num_eval_pairs"] == pytest.approx(
        round(rm["eval/pairwise_accuracy"] * rm["data/num_eval_pairs"]), abs=1e-6
    )
    assert results["rejection_sampling"]["data"]["num_rows"] > 0
    assert "Reward model, held-out pairwise accuracy" in table and "Rejection sampling, kept fraction" in table
    assert any("student vs teacher" in line for line in results["comparisons"])


def test_pipeline_seeds_pools_runs_with_paired_intervals(pipeline_run):
    """benchmarks/studies/pipeline_seeds.py's pooling, on this run given twice as two seeds: the pooled figures are the
    run's own, and a comparison's paired difference is the difference of the two stages, inside its interval."""
    workdir, config, _ = pipeline_run
    out = pipeline_seeds.pooled([workdir, workdir], config)
    single = json.load(open(os.path.join(workdir, "results.json")))["stages"]
    assert set(out["stages"]) == {s for s in TEST_STAGES if config.plan[s].export == "model"}
    for stage, e in out["stages"].items():
        assert e["pass@1"] == pytest.approx(single[stage]["pass@1"], abs=1e-12), stage
        assert e["per_seed_pass@1"] == [pytest.approx(single[stage]["pass@1"], abs=1e-12)] * 2
    (c,) = [c for c in out["comparisons"] if c.get("a") == "reasoning_rl" and c.get("b") == "cold_start"]
    assert c["diff"] == pytest.approx(single["reasoning_rl"]["pass@1"] - single["cold_start"]["pass@1"], abs=1e-12)
    assert c["diff_ci"][0] <= c["diff"] + 1e-12 and c["diff"] <= c["diff_ci"][1] + 1e-12
    assert len(out["reports"]["reward_model"]) == 2
    assert "reward model held-out pairwise accuracy" in pipeline_seeds.markdown(out)


def test_rerun_skips_complete_stages(pipeline_run):
    workdir, config, _ = pipeline_run
    marker = os.path.join(workdir, "reasoning_rl", "metrics.jsonl")
    before = os.path.getmtime(marker)
    result = pipeline_lib.run(config, workdir)
    assert result["stages_run"] == ""
    assert os.path.getmtime(marker) == before


def test_comparisons_state_which_student_is_closer_to_the_data_source():
    scores = {"reasoning_rl": 0.95, "general_rl": 0.88, "distill": 0.93, "student_rl": 0.89, "student_base": 0.1}
    rows = {s: {"pass@1": p} for s, p in scores.items()}
    config = config_lib.load_config(PIPELINE + ":runlocal")
    lines = pipeline_lib.comparisons(rows, config)
    assert "0.930 is better than" in lines[0] and "0.880" in lines[0]  # student vs teacher
    assert lines[-1].endswith("|Δ| 0.020, RL student |Δ| 0.060 → distillation")
    rows["student_rl"]["pass@1"] = 0.96
    assert pipeline_lib.comparisons(rows, config)[-1].endswith("|Δ| 0.020, RL student |Δ| 0.010 → RL")
    del rows["student_rl"]  # a stage not run: its lines are left out
    assert len(pipeline_lib.comparisons(rows, config)) == 2
    # The language-reward ablation compares pass@1 and, named in its declaration, language mixing.
    rows = {"reasoning_rl": {"pass@1": 0.9, "language_mixing": 0.05},
            "reasoning_rl_no_language": {"pass@1": 0.92, "language_mixing": 0.25}}
    lines = pipeline_lib.comparisons(rows, config)
    assert len(lines) == 2 and "pass@1 0.900 is NOT better than" in lines[0] and "pass@1 0.920" in lines[0]
    assert "language_mixing 0.050 is lower than 3b reasoning RL without the language reward language_mixing 0.250" in (
        lines[1]
    )


def test_tiny_stages_share_the_evaluation_distribution():
    """Every tiny stage that draws task problems draws them at the difficulty the held-out evaluation uses."""
    c = config_lib.load_config(PIPELINE + ":tiny")
    want = c.eval.data.difficulty
    for stage in ("stage0", "r1_zero", "cold_start", "reasoning_rl", "rejection_sampling", "general_rl"):
        assert c[stage].data.difficulty == want, (stage, c[stage].data.difficulty, want)


_KILL_DRIVER = """
import shutil, sys
from r1jax import config_lib, pipeline
workdir, base, stages = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
shutil.copytree(base, workdir + "/stage0/model", dirs_exist_ok=True)
overrides = ["distill.init_from_scratch=True", "reasoning_rl.checkpoint.every=1", "reasoning_rl.debug.step_sleep_s=2"]
config = config_lib.load_config(sys.argv[4] + ":runlocal", overrides)
config.stages = tuple(stages)
pipeline.run(config, workdir)
"""


@pytest.mark.slow  # ~3 min on 2 cores; each trainer's kill-and-resume is in the default suite (test_fault_tolerance)
def test_killed_mid_stage_rerun_gives_the_uninterrupted_table(pipeline_run, tiny_base_model, tmp_path, subprocess_env):
    """SIGKILL inside reasoning_rl (after its step 1 is committed), then the same command again: every stage's
    evaluation equals the uninterrupted run's (the fixture's), and the killed stage resumed from its checkpoint."""
    ref_dir = pipeline_run[0]
    workdir = str(tmp_path / "pipeline")
    cmd = [sys.executable, "-c", _KILL_DRIVER, workdir, tiny_base_model, ",".join(TEST_STAGES), PIPELINE]
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step1 = os.path.join(workdir, "reasoning_rl", "checkpoints", "1")
    deadline = time.monotonic() + 600
    while not os.path.isdir(step1) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert os.path.isdir(step1), "the run ended before reasoning_rl committed step 1"
    assert not pipeline_lib.is_complete(workdir, "reasoning_rl", "model")
    subprocess.run(cmd, env=subprocess_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    with open(os.path.join(workdir, "reasoning_rl", "ledger.jsonl")) as fh:
        assert [json.loads(line)["step"] for line in fh] == [1, 2]  # step 1 was not redone
    ref = json.load(open(os.path.join(ref_dir, "results.json")))["stages"]
    got = json.load(open(os.path.join(workdir, "results.json")))["stages"]
    assert list(got) == list(ref)
    # all but the timing; compared as JSON text, so that a NaN metric (no formatted sample) equals itself
    same = lambda entry: json.dumps({k: v for k, v in entry.items() if k != "wall_time_s"}, sort_keys=True)
    for stage in TEST_STAGES:
        assert same(got[stage]) == same(ref[stage]), stage


def test_stage_config_chains_exports_and_budgets_student_rl(tmp_path):
    config = config_lib.load_config(PIPELINE + ":runlocal")
    wd = str(tmp_path)
    m = lambda s: os.path.join(wd, s, "model")
    assert pipeline_lib.stage_config(config, "reasoning_rl", wd).model.checkpoint == m("cold_start")
    sft_cfg = pipeline_lib.stage_config(config, "rejection_sft", wd)
    assert sft_cfg.model.checkpoint == m("stage0")  # the paper retrains the base, not the RL policy
    assert sft_cfg.data.files == (os.path.join(wd, "rejection_sampling", "data.jsonl"),)
    assert pipeline_lib.stage_config(config, "general_rl", wd).rewards.reward_model == m("reward_model")
    d = pipeline_lib.stage_config(config, "distill", wd)
    assert (d.teacher.checkpoint, d.model.checkpoint) == (m("general_rl"), m("student_base"))
    with pytest.raises(RuntimeError, match="distill"):
        pipeline_lib.stage_config(config, "student_rl", wd)
    os.makedirs(os.path.join(wd, "distill"))
    json.dump({"wall_time_s": 12.5}, open(os.path.join(wd, "distill", pipeline_lib.STAGE_FILE), "w"))
    config.student_rl_time_factor = 2.0
    assert pipeline_lib.stage_config(config, "student_rl", wd).rl.max_time_s == 25.0
    student = pipeline_lib.stage_config(config, "student_base", wd)
    assert student.tokenizer.path == os.path.join(m("stage0"), "tokenizer.model")
    assert pipeline_lib.stage_config(config, "stage0", wd).model.checkpoint == ""  # declares no inputs


def test_stage_wiring_is_data():
    """r1jax/pipeline.py names no stage; each stage's entry is its experiment file's ENTRY; a wrong declaration is
    refused naming the stage and the field, before anything runs."""
    source = open(pipeline_lib.__file__).read()
    config = config_lib.load_config(PIPELINE + ":runlocal")
    for stage in config.plan:
        assert f'"{stage}"' not in source and f"'{stage}'" not in source, stage
    assert not hasattr(pipeline_lib, "ENTRIES")
    assert config.plan.distill.inputs == (
        ("model.checkpoint", "student_base", "model"),
        ("data.files", "rejection_sampling", "data"),
        ("teacher.checkpoint", "general_rl", "model"),
    )
    pipeline_lib.validate(config)
    bad = [
        ("plan.distill.inputs", (("teacher.checkpoints", "general_rl", "model"),), "no field 'teacher.checkpoints'"),
        ("plan.distill.inputs", (("teacher.checkpoint", "teacher", "model"),), "source stage 'teacher'"),
        ("plan.distill.inputs", (("teacher.checkpoint", "general_rl", "weights"),), "output 'weights'"),
        ("plan.student_rl.inputs", (("rl.max_time_s", "distill", "wall_time_s"),), "a factor field goes with"),
        ("plan.reward_model.export", "weights", "plan.reward_model.export='weights'"),
        ("stages", ("stage0", "stage7"), "'stage7' has no plan.stage7"),
    ]
    for field, value, match in bad:
        c = config_lib.load_config(PIPELINE + ":runlocal")
        node, name = c, field.split(".")
        for part in name[:-1]:
            node = node[part]
        node[name[-1]] = value
        with pytest.raises(ValueError, match=match.replace("(", r"\(")):
            pipeline_lib.validate(c)


# ---------------------------------------------------------------------------------------------------------------
# Data: cold start format, preference pairs


def test_cold_start_records_are_correct_and_in_the_output_format():
    task = tasks_lib.get_task("arithmetic")
    records = corpus.cold_start_records(task, 50, seed=0, difficulty=1, template="short")
    examples = task.generate(50, seed=0, difficulty=1, split="train")  # training data: the train split
    assert all(format_ok(r["response"], "strict") for r in records)
    assert (
        accuracy_reward(
            [r["response"] for r in records],
            [e.answer for e in examples],
            examples=[e.to_dict() for e in examples],
            extract=("answer_tag",),
        )
        == [1.0] * 50
    )


def test_cold_start_language_mixing_puts_a_second_script_in_that_share_of_the_reasoning():
    from r1jax.rewards.language import language_consistency

    task = tasks_lib.get_task("arithmetic")
    clean = corpus.cold_start_records(task, 400, seed=0, difficulty=1, template="short")
    mixed = corpus.cold_start_records(task, 400, seed=0, difficulty=1, template="short", language_mix_rate=0.3)
    scores = np.array([language_consistency(think_text(r["response"])) for r in mixed])
    assert all(language_consistency(think_text(r["response"])) == 1.0 for r in clean)
    assert 0.22 < np.mean(scores < 1.0) < 0.38  # about 30% of responses mix Han into the reasoning
    assert 0.0 < np.median(scores[scores < 1.0]) < 1.0  # mixed, not translated: usually English words are left too
    for c, m in zip(clean, mixed):  # same questions, same answers; only the reasoning's words change
        assert c["prompt"] == m["prompt"] and summary_text(c["response"]) == summary_text(m["response"])
        assert format_ok(m["response"], "strict")
    with pytest.raises(ValueError, match="language_mix_rate=1.5"):
        corpus.cold_start_records(task, 4, seed=0, difficulty=1, template="short", language_mix_rate=1.5)
    # The pretraining corpus mixes the same way, on its own random stream: without mixing it is unchanged.
    kw = dict(seed=0, difficulty=1, template="short", format_rate=0.5, error_rate=0.2)
    plain, mixed = (corpus.pretraining_records(task, 400, language_mix_rate=r, **kw) for r in (0.0, 0.2))
    assert plain == corpus.pretraining_records(task, 400, **kw)
    share = np.mean([language_consistency(r["response"].replace("</answer>", "")) < 1.0 for r in mixed])
    assert 0.13 < share < 0.27


def test_preference_pairs():
    pairs = preferences.preference_pairs(200, seed=0)
    assert {p["kind"] for p in pairs} == set(preferences.REJECTIONS)
    for p in pairs:
        assert p["chosen"] != p["rejected"]
        if p["kind"] == "harmful_think":  # only a whole-response score can see it
            assert preferences.HARM_MARKER in think_text(p["rejected"])
            assert summary_text(p["rejected"]) == summary_text(p["chosen"])
    summaries = [p for p in pairs if think_text(p["chosen"]) is None]
    assert 0.25 * len(pairs) < len(summaries) < 0.5 * len(pairs)  # about half of the 3/5 that may be reduced


# ---------------------------------------------------------------------------------------------------------------
# Rejection-sampling filters


def test_filter_predicates():
    clean = " <think> 7+5=12, write 2, carry 1. So 47+85=132. </think> <answer> 132 </answer>"
    assert not rejection_sampling.is_mixed_language(clean)
    assert rejection_sampling.is_mixed_language(" <think> 7+5=12, 所以 进位 一 所以 </think> <answer> 132 </answer>")
    # Only the chain of thought counts: a foreign word in the summary is not mixed reasoning.
    assert not rejection_sampling.is_mixed_language(" <think> add the columns </think> <answer> 答案 </answer>")
    long_para = " <think> " + "word " * 30 + "</think> <answer> 1 </answer>"
    split = " <think> " + "word " * 15 + "\n\n" + "word " * 15 + "</think> <answer> 1 </answer>"
    assert rejection_sampling.has_overlong_paragraph(long_para, max_words=20)
    assert not rejection_sampling.has_overlong_paragraph(split, max_words=20)
    assert rejection_sampling.has_code_block(" <think> ```python\nprint(1)\n``` </think> <answer> 1 </answer>")
    assert not rejection_sampling.has_code_block(" <think> no code here </think> <answer> ``` </answer>")


def test_filter_samples_counts_each_filter():
    f = rejection_sampling.rejection_sampling_config().filters
    f.max_paragraph_words = 20
    good = " <think> 7+5=12, write 2. </think> <answer> 12 </answer>"
    samples = [
        {"prompt_id": "a", "response": good, "correct": True},
        {"prompt_id": "a", "response": good.replace("write", "write  "), "correct": True},  # duplicate (spaces)
        {"prompt_id": "b", "response": good, "correct": True},  # same text, other prompt: kept
        {"prompt_id": "a", "response": good, "correct": False},  # wrong
        {"prompt_id": "a", "response": " 12", "correct": True},  # no format
        {"prompt_id": "a", "response": " <think> 所以 所以 进位 </think> <answer> 12 </answer>", "correct": True},
        {"prompt_id": "a", "response": " <think> " + "x " * 25 + "</think> <answer> 12 </answer>", "correct": True},
        {"prompt_id": "a", "response": " <think> ```\n1\n``` </think> <answer> 12 </answer>", "correct": True},
    ]
    kept, stats = rejection_sampling.filter_samples(samples, f)
    assert [s["prompt_id"] for s in kept] == ["a", "b"]
    assert [stats[n]["kept"] for n in rejection_sampling.FILTERS] == [7, 6, 5, 4, 3, 2]
    assert stats["duplicate"]["kept_fraction"] == pytest.approx(2 / 3)
    assert stats["total"] == {"in": 8, "kept": 2, "kept_fraction": 0.25, "prompts": 2, "prompts_with_a_kept_sample": 2}
    f.max_per_prompt = 1
    f.require_format = False
    kept, stats = rejection_sampling.filter_samples(samples[:3] + [samples[4]], f)
    assert [s["response"] for s in kept] == [good, good]  # ' 12' for prompt a is over the per-prompt cap


# ---------------------------------------------------------------------------------------------------------------
# Reward model


def test_bradley_terry_loss_golden():
    r_c, r_r = jnp.array([1.0, -0.5, 2.0, 30.0]), jnp.array([0.0, 0.5, 2.0, -30.0])
    # −log σ(m) for margins 1, −1, 0, 60 (the last must not overflow)
    want = np.mean([math.log1p(math.exp(-1)), math.log1p(math.exp(1)), math.log(2.0), math.log1p(math.exp(-60))])
    assert float(reward_model.bradley_terry_loss(r_c, r_r)) == pytest.approx(want, rel=1e-6)
    assert float(reward_model.pairwise_accuracy(r_c, r_r)) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    grad = jax.grad(lambda c: reward_model.bradley_terry_loss(c, r_r))(r_c)
    np.testing.assert_allclose(grad, -jax.nn.sigmoid(r_r - r_c) / 4, rtol=1e-6)  # d/dr_c = −σ(−m) / N


def test_reward_model_pairwise_accuracy_rises(tiny_base_model, tmp_path):
    c = config_lib.load_config(os.path.join(REPO, "experiments", "reward_model.py") + ":runlocal")
    c.model.checkpoint = tiny_base_model
    c.data.num_pairs = 400  # 40 held out
    c.seq_len = 64
    c.batch_size = 8
    c.num_steps = 60
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 5
    c.log_every = 20
    c.eval_every = 0
    c.checkpoint.every = 1000
    out = reward_model.train(c, str(tmp_path))
    assert out["eval_init/pairwise_accuracy"] == 0.5  # a zero head ties every pair
    assert out["eval/pairwise_accuracy"] >= 0.7
    # Refusals and harmful text are easy to tell apart; a changed digit ('wrong') is not, for a model this small.
    for kind in ("refusal", "harmful", "harmful_think"):
        assert out[f"eval/pairwise_accuracy/{kind}"] >= 0.9, kind
    # The export scores like the trained model: chosen above rejected on the easy (refusal) pairs.
    scorer = RewardModelScorer(str(tmp_path / "model"), batch_size=4)
    pairs = [p for p in preferences.preference_pairs(40, seed=99) if p["kind"] == "refusal"]
    chosen = scorer([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert np.mean(np.array(chosen) > np.array(rejected)) >= 0.75


def test_routed_rewards_send_general_prompts_to_the_scorer():
    calls = []

    def scorer(prompts, responses):
        calls.append(list(responses))
        return [float(len(r)) for r in responses]

    rc = grpo_config.rewards_config(weights={"format": 1.0}, general_weights={"helpfulness": 1.0, "harmlessness": 0.5})
    reasoning = make_reward_fn([RewardSpec("format", kwargs={"mode": "strict"})])
    general = make_reward_fn(
        [
            RewardSpec("reward_model", weight=w, key=k, kwargs={"scorer": scorer, "summary_only": k == "helpfulness"})
            for k, w in rc.general_weights.items()
        ]
    )
    fn = RoutedRewards(reasoning, general)
    text = " <think> ab </think> <answer> 4 </answer>"
    examples = [{"task": "arithmetic", "answer": "4"}, {"task": preferences.GENERAL_TASK, "answer": "4"}]
    out = fn(["q1", "q2"], [text, text], examples)
    summary = summary_text(text)
    np.testing.assert_allclose(out.rewards, [1.0, len(summary) + 0.5 * len(text)])
    assert sorted(calls) == sorted([[summary], [text]])  # only the general prompt was scored, once per reward
    assert np.isnan(out.per_reward["helpfulness"][0]) and np.isnan(out.per_reward["format"][1])
    assert out.stats["reward/general/fraction"] == 0.5


def test_general_weights_need_a_reward_model():
    c = config_lib.load_config(os.path.join(REPO, "experiments", "general_rl.py") + ":runlocal")
    with pytest.raises(ValueError, match="rewards.reward_model"):
        grpo.validate(c)


# ---------------------------------------------------------------------------------------------------------------
# Distillation


def _kd_setup(v=64):
    student = init_model(get_preset("tiny-student", vocab_size=v, num_layers=1), seed=0)
    teacher = init_model(get_preset("tiny", vocab_size=v, num_layers=1), seed=1)
    rng = np.random.default_rng(0)
    b, t = 2, 12
    tokens = rng.integers(3, v, (b, t + 1)).astype(np.int32)
    batch = {
        "tokens_bt": tokens[:, :-1],
        "targets_bt": tokens[:, 1:],
        "loss_mask_bt": (np.arange(t)[None] >= 4).repeat(b, 0).astype(np.int32),
        "segment_ids_bt": np.ones((b, t), np.int32),
        "positions_bt": np.arange(t)[None].repeat(b, 0).astype(np.int32),
    }
    s_gd, s_params, _ = train_state.split_model(student)
    t_gd, t_params, _ = train_state.split_model(teacher)
    return student, teacher, batch, s_gd, s_params, t_gd, t_params


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_distill_kl_equals_the_kl_kernel(direction):
    student, teacher, batch, s_gd, s_params, t_gd, t_params = _kd_setup()
    loss, m = distill.distill_loss(
        s_params,
        t_params,
        batch,
        graphdef=s_gd,
        teacher_graphdef=t_gd,
        kl_weight=1.0,
        direction=direction,
        temperature=2.0,
        implementation="chunked",
    )
    h_s, _ = student(batch["tokens_bt"])
    h_t, _ = teacher(batch["tokens_bt"])
    s, t = (h_s, student.lm_head_weight()), (h_t, teacher.lm_head_weight())
    p, q = (s, t) if direction == "reverse" else (t, s)
    kl_bt = kernels.kl(*p, *q, temperature=2.0, implementation="xla")
    mask = batch["loss_mask_bt"]
    want = float((kl_bt * mask).sum() / mask.sum())
    assert want > 1e-4
    assert float(loss) == pytest.approx(want, rel=1e-4) and float(m["distill/kl"]) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_distill_kl_loss_decreases(direction):
    _, _, batch, s_gd, s_params, t_gd, t_params = _kd_setup()
    # A sharper teacher (larger tied embedding, so larger logits): a KL far from 0 to come down from.
    t_params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 5.0 if "embed" in jax.tree_util.keystr(path) else x, t_params
    )
    c = distill.distill_config()
    c.optim.update(learning_rate=1e-2, warmup_steps=0, decay="constant")
    optimizer = train_state.make_optimizer(c.optim, 15)
    graphdef, state, _ = train_state.create_train_state(
        train_state.merge(s_gd, s_params),
        optimizer,
        jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor")),
        0,
    )
    step = jax.jit(
        lambda st, tp, bt: distill.train_step(
            st,
            tp,
            bt,
            optimizer=optimizer,
            graphdef=graphdef,
            teacher_graphdef=t_gd,
            kl_weight=1.0,
            direction=direction,
            temperature=1.0,
            implementation="chunked",
        )
    )
    kls = []
    for _ in range(15):
        state, m = step(state, t_params, batch)
        assert float(m["distill/loss"]) == pytest.approx(float(m["distill/kl"]))  # α = 1: the loss is the KL
        kls.append(float(m["distill/kl"]))
    assert kls[0] > 0.5 and kls[-1] < 0.7 * kls[0], kls


def test_distill_config_errors_name_the_field(tmp_path):
    c = distill.distill_config()
    c.teacher.checkpoint = str(tmp_path)
    c.data.files = (str(tmp_path / "missing.jsonl"),)
    c.distill.kl_direction = "sideways"
    with pytest.raises(ValueError, match="distill.kl_direction='sideways'"):
        distill.validate(c)
    c.distill.kl_direction = "forward"
    c.distill.kl_weight = 1.5
    with pytest.raises(ValueError, match="distill.kl_weight=1.5"):
        distill.validate(c)


def test_sft_num_epochs_counts_packed_batches():
    records = [{"id": str(i), "prompt": f"q{i} ", "response": "a" * (i % 7 + 1)} for i in range(60)]
    tok = SentencePieceTokenizer.train([r["prompt"] + r["response"] for r in records], vocab_size=300)
    kw = dict(
        encode=tok.encode,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        seq_len=32,
        batch_size=2,
        seed=0,
        on_error="raise",
        fields=SFTFields(),
    )
    one, two = (sft.epoch_steps(records, n, kw) for n in (1, 2))
    assert one >= 1 and abs(two - 2 * one) <= 1


def test_non_reasoning_records_are_general_and_formatted():
    rows = preferences.non_reasoning_records(10, seed=0, template="short")
    assert len({r["id"] for r in rows}) == 10
    assert all(format_ok(r["response"]) and r["prompt"].startswith("User: ") for r in rows)
