"""The recipes and the guide (docs/recipes.md): every command in the guide runs, with its paths replaced by a toy
Qwen2-family checkpoint (random weights, a byte-level BPE tokenizer.json: r1jax/models/toy.py) and sample files
written in the real formats and layouts (r1jax/data/formats.py), and `,runlocal` added to the config arg (two GRPO
steps at tiny sizes, f32)."""

import json
import math
import pathlib
import re
import shlex

import pytest

from r1jax import config_lib, main
from r1jax.data import formats
from r1jax.models import toy
from r1jax.tokenizer import TEMPLATES
from r1jax.trainers import grpo_config

REPO = pathlib.Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "recipes.md"


def guide_commands() -> list[str]:
    """The `r1jax ...` commands of the guide's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip().startswith("r1jax ")]


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    samples = formats.write_samples(str(root / "data"), n=8)
    texts = []
    for name, fmt, split in [("gsm8k", "gsm8k", "train"), ("math", "math", "train"), ("countdown", "countdown", None)]:
        texts += [r["question"] + " " + r["solution"] for r in formats.load(samples[name], fmt, split=split)]
    texts += list(TEMPLATES.values()) * 4 + ["<think> </think> <answer> </answer> \\boxed{} 0123456789"]
    checkpoint = toy.write_toy_checkpoint(str(root / "toy_qwen2"), texts)
    paths = {
        "/models/Qwen2.5-0.5B": checkpoint, "/models/Qwen2.5-1.5B": checkpoint, "/models/Qwen2.5-3B": checkpoint,
        "/models/Qwen2.5-Math-1.5B": checkpoint,
        "/data/MATH-500/test.jsonl": samples["math500"], "/data/aime_2024.jsonl": samples["aime"],
        "/data/gsm8k": samples["gsm8k"], "/data/MATH": samples["math"], "/data/countdown": samples["countdown"],
        "/data/traces": samples["traces"],
        # the guide evaluates the recipes' exports; here the toy checkpoint stands in, so each test runs alone
        "/runs/gsm8k_0.5b/model": checkpoint, "/runs/math_1.5b/model": checkpoint,
        "/runs": str(root / "runs"), "gs://BUCKET": str(root / "bucket"),
    }
    return paths


def localise(command: str, paths: dict, runlocal: bool = True) -> list[str]:
    # longest first: /data/MATH-500 before /data/MATH
    for src, dst in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        command = command.replace(src, dst)
    argv = shlex.split(command)[1:]
    i = argv.index("--config") + 1
    argv[i] += ",runlocal" if runlocal else ""
    return argv


def _by(prefix: str) -> list[str]:
    return [c for c in guide_commands() if c.startswith(prefix)]


def test_guide_has_the_commands_the_tests_run():
    assert len(_by("r1jax train")) == 6 and len(_by("r1jax eval")) == 3 and len(_by("r1jax sweep")) == 1
    recipes = {re.search(r"experiments/(\w+)\.py", c).group(1) for c in _by("r1jax train")}
    assert recipes == {"r1_zero_gsm8k", "r1_zero_math", "dr_grpo_math", "countdown", "distill_traces"}


@pytest.mark.parametrize("index", range(4))
def test_each_rl_recipe_trains_two_steps(toy_world, index):
    """The four single-device GRPO commands (the TPU VM one differs only in the mesh: checked below)."""
    argv = localise(_by("r1jax train")[index], toy_world)
    assert main.run(argv) == 0
    workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "rl/reward_mean" in h] == [1, 2]
    assert (workdir / "model" / "config.json").exists() and (workdir / "model" / "tokenizer.json").exists()


def test_distillation_recipe_trains_on_chat_traces(toy_world):
    argv = localise(_by("r1jax train")[4], toy_world)
    assert "distill_traces" in argv[argv.index("--config") + 1]
    assert main.run(argv) == 0
    workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [h["sft/loss"] for h in history if "sft/loss" in h]
    vocab = json.loads((pathlib.Path(toy_world["/models/Qwen2.5-Math-1.5B"]) / "config.json").read_text())["vocab_size"]
    assert len(losses) == 2 and abs(losses[0] - math.log(vocab)) < 1.0  # a random model's loss on real targets
    manifest = [json.loads(line) for line in (workdir / "data_manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 8 and all(m["role"] == "train" for m in manifest)  # the 8 trace questions, untemplated
    assert all("<|im_start|>" not in m["question"] for m in manifest)


def test_tpu_vm_command_is_a_valid_config(toy_world):
    argv = localise(_by("r1jax train")[5], toy_world, runlocal=False)  # the recipe's own sizes, on 8 devices
    overrides = [a for a in argv if a.startswith("--config.")]
    config = config_lib.load_config(argv[argv.index("--config") + 1], overrides)
    assert tuple(config.mesh.shape) == (1, -1, 1)
    grpo_config.validate(config, num_devices=8)


def test_recipes_read_their_formats_and_filters(toy_world):
    cfg = config_lib.load_config(str(REPO / "experiments" / "dr_grpo_math.py") + ":qwen2.5-math-1.5b")
    assert (cfg.data.format, tuple(cfg.data.levels), cfg.rl.loss_type, cfg.rl.scale_rewards) == (
        "math", (3, 4, 5), "dr_grpo", "none")
    with pytest.raises(ValueError, match="this recipe has"):
        config_lib.load_config(str(REPO / "experiments" / "r1_zero_gsm8k.py") + ":qwen2.5-7b")
    files = f"--config.data.train_files=('{toy_world['/data/gsm8k']}',)"
    cfg = config_lib.load_config(
        str(REPO / "experiments" / "r1_zero_gsm8k.py") + ":qwen2.5-0.5b", ["--config.data.format=gsm8kk", files]
    )
    with pytest.raises(ValueError, match="data.format='gsm8kk'"):
        grpo_config.validate(cfg, num_devices=1)


@pytest.mark.parametrize("index", range(3))
def test_eval_on_each_standard_set_writes_the_table(toy_world, index):
    argv = localise(_by("r1jax eval")[index], toy_world)
    assert main.run(argv) == 0
    workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
    results = json.loads((workdir / "eval.json").read_text())
    (metrics,) = results.values()
    assert metrics["num_prompts"] == 8 and metrics["k"] == 2  # every problem of the sample file, runlocal's k
    assert (workdir / "eval.md").exists()


def test_sweep_print_launch_prints_a_command_per_seed(toy_world, capsys):
    argv = localise(_by("r1jax sweep")[0], toy_world)
    assert main.run(argv) == 0
    out = capsys.readouterr().out
    assert out.count("gcloud") >= 1 and "my-v5p-64" in out
    for seed in (0, 1, 2):
        assert f"--config.seed={seed}" in out
