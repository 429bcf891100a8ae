"""The demo end to end, shortened: stage 0 → base eval → R1-Zero → final eval, in one process.

It runs the two-digit variant (`--variant two-digit`), on which GRPO learns within these few steps; the default
(headroom) presets are the same stages with other settings, and `test_variant_picks_the_presets` checks that the
CLI reaches them.

The full demo (`r1jax demo`) is measured in benchmarks/RESULTS.md; this keeps its shape and checks that GRPO
learns (with a fixed seed, the mean reward of the last RL steps is above that of the first ones), that
demo_results.json's metrics agree with each other and with the saved per-prompt sums, and that `--seeds 2`
pools two seeds.
"""

import json
import os
import shutil

import numpy as np
import pytest

from r1jax import demo, evals, main
from r1jax import metrics as metrics_lib

TWO_DIGIT = main.DEMO_VARIANTS["two-digit"]  # run_demo's arg for `--variant two-digit`
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
FIELDS = {n for name in demo.RESULT_METRICS for n in (name, f"{name}_ci")}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo"))
    return workdir, demo.run_demo(workdir, seed=0, overrides=SHORT, arg=TWO_DIGIT)


def _seed_results(workdir):
    with open(os.path.join(workdir, demo.SEED_RESULTS)) as f:
        return json.load(f)


def test_reward_rises(demo_run):
    workdir, _ = demo_run
    history = metrics_lib.read_history(os.path.join(workdir, "r1_zero"))
    rewards = [h["rl/reward_mean"] for h in history if "rl/reward_mean" in h]
    assert len(rewards) == 10
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert last > first + 0.05, rewards


def test_results_json_metrics_agree(demo_run):
    workdir, results = demo_run
    with open(os.path.join(workdir, "demo_results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert (saved["k"], saved["num_prompts"], saved["seeds"], saved["split"]) == (2, 16, [0], "test")
    per_seed = _seed_results(workdir)
    for model in ("base", "final"):
        m = saved[model]
        assert set(m) == FIELDS
        # pass@1 is strict: formatted and right, so it factors into format rate × accuracy given format.
        assert m["pass@1"] == pytest.approx(m["format_rate"] * (m["accuracy_given_format"] or 0.0), abs=1e-9)
        assert m["lenient_accuracy"] >= m["pass@1"]
        for name in demo.RESULT_METRICS:
            if m[name] is not None:
                lo, hi = m[f"{name}_ci"]
                assert lo - 1e-9 <= m[name] <= hi + 1e-9, (model, name, m[name], lo, hi)
        # The point estimates are the ratios of the saved per-prompt sums (2 samples for each of 16 prompts).
        sums = evals.prompt_sums_from_json(per_seed[model]["per_prompt"])
        np.testing.assert_array_equal(sums["pass@1"][1], np.full(16, 2.0))
        for name in ("pass@1", "format_rate", "mean_length", "reflection_rate", "cons@k"):
            assert m[name] == pytest.approx(evals.ratio(*sums[name]), abs=1e-12), name
        assert m == {k: saved["per_seed"]["0"][model][k] for k in FIELDS}
    assert set(saved["wall_time_s"]) == {"stage0_s", "eval_base_s", "r1_zero_s"}
    # Whether the final evaluation's format rate is above the base's is not asserted: at 16 prompts x 2 samples
    # the two intervals overlap (one CPU gave 0.72 [0.56, 0.88] -> 0.63 [0.44, 0.81], where the machine this test
    # was written on gave a rise), so the difference is no finding at this size. `test_format_is_learned_first`
    # checks the learning on the training samples instead.


def test_format_is_learned_first(demo_run):
    """The format reward of the RL samples (32 a step) rises over the 10 steps, before any accuracy: the first
    thing R1-Zero learns on the two-digit base (measured on one CPU: 0.28 over the first 3 steps, 0.57 over the
    last 3)."""
    workdir, _ = demo_run
    history = metrics_lib.read_history(os.path.join(workdir, "r1_zero"))
    fmt = [h["reward/format/mean"] for h in history if "reward/format/mean" in h]
    assert len(fmt) == 10
    assert np.mean(fmt[-3:]) > np.mean(fmt[:3]) + 0.1, fmt


def test_final_metrics_are_the_saved_models_evaluation(demo_run):
    """The demo takes the trainer's evaluation of its final parameters; evaluating the saved model afresh (what
    `r1jax eval` does) gives the same per-prompt sums."""
    workdir, _ = demo_run
    from r1jax import config_lib

    rl_cfg = config_lib.load_config(demo._experiment("r1_zero"), demo._stage_overrides(SHORT, "r1_zero"))
    rl_cfg.seed, rl_cfg.model.checkpoint = 0, os.path.join(workdir, "stage0", "model")
    fresh = evals.evaluate_model_dir(rl_cfg, os.path.join(workdir, "r1_zero", "model"), per_prompt=True)
    assert fresh["per_prompt"] == _seed_results(workdir)["final"]["per_prompt"]


def test_length_ratio_comes_from_the_trainer_log(demo_run):
    workdir, saved = demo_run
    history = metrics_lib.read_history(os.path.join(workdir, "r1_zero"))
    lengths = [h[demo.LENGTH_KEY] for h in history if demo.LENGTH_KEY in h]
    assert len(lengths) == 10 and saved["length_window"] == 5  # 10 steps: two windows of 5
    assert saved["length_ratio_last_first"] == pytest.approx(np.mean(lengths[-5:]) / np.mean(lengths[:5]))
    assert os.path.getsize(os.path.join(workdir, "demo_curves.png")) > 10_000
    assert os.path.exists(os.path.join(workdir, "r1_zero", "tb", "demo_curves.png"))
    # The trainer's final evaluation is logged with the new metrics, for the curves.
    last = history[-1]
    assert {"eval/accuracy_given_format", "eval/reflection_rate", "eval/lenient_accuracy"} <= set(last)


def test_second_run_reuses_results(demo_run, capsys):
    workdir, first = demo_run
    mtime = os.path.getmtime(os.path.join(workdir, "stage0", "model", "model.safetensors"))
    again = demo.run_demo(workdir, seed=0, overrides=SHORT, arg=TWO_DIGIT)
    out = capsys.readouterr().out
    assert "reusing the finished results" in out
    assert again == first
    assert os.path.getmtime(os.path.join(workdir, "stage0", "model", "model.safetensors")) == mtime
    assert "| pass@1 | " in out and " [" in out  # the before/after table carries intervals


def test_two_seeds_are_pooled(demo_run, tmp_path):
    workdir, first = demo_run
    # Seed 0 is the finished one-seed run above, in the directory's root (`r1jax demo` before `--seeds 2`); seed 1
    # reuses its base model (a stage-0 model present in a seed's directory is reused) and runs its own base
    # evaluation, R1-Zero and final evaluation in seed_1/.
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    shutil.copytree(os.path.join(workdir, "stage0"), tmp_path / "seed_1" / "stage0")
    argv = ["demo", "--workdir", str(tmp_path), "--seeds", "2", "--variant", "two-digit"]
    results = main.run([*argv, *[f"--config.{o}" for o in SHORT]])
    assert results == 0
    with open(tmp_path / "demo_results.json") as f:
        saved = json.load(f)
    assert saved["seeds"] == [0, 1] and set(saved["per_seed"]) == {"0", "1"}
    assert saved["per_seed"]["0"]["final"] == first["final"]
    assert saved["per_seed"]["0"]["workdir"] == str(tmp_path) and not os.path.exists(tmp_path / "seed_0")
    s1 = _seed_results(tmp_path / "seed_1")
    assert s1["seed"] == 1 and os.path.exists(tmp_path / "seed_1" / "r1_zero" / "model" / "config.json")
    for model in ("base", "final"):
        m, per = saved[model], [saved["per_seed"][s][model] for s in ("0", "1")]
        # Same prompts and k for both seeds: the pooled estimate is the mean of the two.
        for name in ("pass@1", "format_rate", "lenient_accuracy", "mean_length", "cons@k"):
            assert m[name] == pytest.approx((per[0][name] + per[1][name]) / 2, abs=1e-9), (model, name)
            lo, hi = m[f"{name}_ci"]
            assert lo - 1e-9 <= m[name] <= hi + 1e-9
    ratios = [saved["per_seed"][s]["length_ratio_last_first"] for s in ("0", "1")]
    assert saved["length_ratio_last_first"] == pytest.approx(np.mean(ratios))


def test_seeds_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="seeds=0"):
        demo.run_demo(str(tmp_path), seeds=0, overrides=SHORT)


def test_plot_panels_draws_only_logged_metrics(tmp_path):
    history = [{"step": s, "rl/reward_mean": s / 10, "rl/completion_length_mean": 20 + s} for s in range(1, 6)]
    path = metrics_lib.plot_panels({"seed 0": history}, demo.CURVE_PANELS, str(tmp_path / "c.png"))
    assert path and os.path.getsize(path) > 0
    assert metrics_lib.plot_panels({"seed 0": history}, {"x": ["eval/none"]}, str(tmp_path / "d.png")) is None
    assert metrics_lib.window_ratio(history, "rl/completion_length_mean", 10) == (pytest.approx(24.5 / 21.5), 2)
    assert metrics_lib.window_ratio(history[:1], "rl/completion_length_mean")[1] == 0


def test_undefined_metrics_are_null_in_the_json():
    # accuracy_given_format of a model that never answers in format is 0/0: null, so the JSON stays standard.
    nan = float("nan")
    safe = demo._json_safe({"a": nan, "b": [1.0, nan], "c": {"d": nan}})
    assert safe == {"a": None, "b": [1.0, None], "c": {"d": None}}
    assert evals.format_value({"x": 0.5, "x_ci": [None, None]}, "x") == "0.500"


def test_variant_picks_the_presets(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda workdir, **kw: seen.update(kw, workdir=workdir))
    assert main.run(["demo", "--workdir", str(tmp_path)]) == 0  # the default is the headroom variant
    assert seen["arg"] == main.DEMO_VARIANTS["headroom"] == "tiny,headroom" and seen["seeds"] == 1
    from r1jax import config_lib

    for stage in ("pretrain", "r1_zero"):  # the arg the demo appends to each stage's experiment file
        c = config_lib.load_config(demo._experiment(stage) + ":" + seen["arg"])
        assert c.data.difficulty == 6, stage
    assert main.run(["demo", "--workdir", str(tmp_path), "--variant", "two-digit"]) == 0 and seen["arg"] == TWO_DIGIT
    c = config_lib.load_config(demo._experiment("pretrain") + ":" + TWO_DIGIT)
    assert c.data.difficulty == 0
