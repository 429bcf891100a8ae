"""Stage 1: DeepSeek-R1-Zero — GRPO straight from the base model with accuracy + format rewards (paper 2.2).

    r1jax train --config experiments/r1_zero.py:tiny --workdir /tmp/r1jax/r1_zero \\
        --config.model.checkpoint=/tmp/r1jax/stage0/model
    r1jax train --config experiments/r1_zero.py:qwen2.5-math-1.5b --workdir gs://.../r1z \\
        --config.model.checkpoint=/path/to/Qwen2.5-Math-1.5B --config.data.train_files=train.jsonl

Loss aggregation: token-level ('dapo') by default. The paper's eq. 3 averages per sequence first ('grpo'),
which shrinks the gradient of every token of a long completion by its length; with completions of hundreds to
thousands of tokens that is a ~10× smaller update and training stalls, so presets use token-level aggregation
and 'grpo' stays one override away (--config.rl.loss_type=grpo).

Args: `tiny` (the built-in default, 2-core CPU), `runlocal` (a few steps for tests), or a real model preset
name (`qwen2.5-1.5b`, `qwen2.5-math-1.5b`, `qwen2.5-7b`, `llama-3.1-8b`), which needs model.checkpoint.
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import grpo

ENTRY = "r1jax.trainers.grpo:train"

REAL_MODELS = (
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.1-8b",
)


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, positional="model", model="tiny", runlocal=False, task="arithmetic", headroom=False)
    if arg.headroom and (arg.model != "tiny" or arg.task != "arithmetic"):
        raise ValueError(f"config arg headroom with model={arg.model!r}, task={arg.task!r}: tiny arithmetic only")
    c = grpo.grpo_config()
    c.model.preset = arg.model
    c.data.task = arg.task
    c.rl.loss_type = "dapo"
    c.rl.epsilon_high = 0.28  # clip-higher (DAPO)
    c.rewards.weights = {"accuracy": 1.0, "format": 0.5}
    if arg.model == "tiny":
        c.data.difficulty = tiny_difficulty(arg.task)
        c.template = "short"
        c.rl.group_size = 8
        c.rl.prompts_per_step = 16
        c.rl.num_steps = 60
        c.sampling.max_new_tokens = 64  # worked solutions are <= 63 tokens with EOS
        c.sampling.max_prompt_len = 32
        c.sampling.prompt_bucket = 16
        c.optim.learning_rate = 1e-4
        c.optim.warmup_steps = 5
        c.optim.decay = "cosine"  # on this base, 60 steps: held-out pass@1 0.94 with cosine, 0.89 with constant
        c.eval.every = 10  # held-out pass@1 against steps, for the demo's plot
        c.eval.num_prompts = 64
        c.eval.num_samples = 4
        c.checkpoint.every = 20
        if arg.headroom:  # the base of experiments/pretrain.py:tiny,headroom
            c.data.difficulty = 6
            c.sampling.max_new_tokens = 128  # 3-digit sums: worked <= 86 tokens with EOS, re-checked <= 112
            c.eval.every = 20  # 64 prompts × 4 samples of up to 128 tokens: an evaluation costs ~3 RL steps
    elif arg.model in REAL_MODELS:
        c.template = "r1_zero"
        c.model.dtype = "bfloat16"
        c.model.remat = True
        c.rl.shared_prompt_forward = True  # each 512-token prompt runs once in the update, not once per sample
        c.rl.group_size = 16
        c.rl.prompts_per_step = 32
        c.rl.num_steps = 1000
        c.rl.beta = 0.001
        c.sampling.max_new_tokens = 4096
        c.sampling.max_prompt_len = 512
        c.optim.learning_rate = 1e-6
        c.optim.warmup_steps = 10
        c.eval.every = 50
        c.eval.num_samples = 16
    else:
        raise ValueError(f"config arg model={arg.model!r}: expected 'tiny' or one of {REAL_MODELS}")
    if arg.runlocal:
        c.rl.group_size = 4
        c.rl.prompts_per_step = 4
        c.rl.num_steps = 2
        c.sampling.max_new_tokens = 16
        c.data.num_train = 64
        c.data.num_eval = 8
        c.eval.num_prompts = 4
        c.eval.num_samples = 2
        c.checkpoint.every = 1
    return c


def sweep(add):
    """`r1jax sweep --config experiments/r1_zero.py:tiny --workdir DIR --config.model.checkpoint=...`: group size G
    against the loss aggregation (paper eq. 3 'grpo' versus token-level 'dapo'), six runs in DIR/<run-name>.
    A sweep chooses settings, so it should read validation numbers: add --config.eval.split=validation (reported
    numbers come from the default, 'test')."""
    for loss_type in ("dapo", "grpo"):
        for group_size in (4, 8, 16):
            add(**{"rl.loss_type": loss_type, "rl.group_size": group_size})
