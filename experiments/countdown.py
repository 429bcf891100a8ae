"""Recipe: Countdown R1-Zero at the TinyZero setting (Jiayi Pan et al., 2025; Qwen2.5-3B / 1.5B base models).

TinyZero trains a Qwen2.5 base model on Countdown (reach a target with 3–4 given numbers, each used exactly once,
and + - * /) with the R1-Zero template and a rule reward (1 for a correct equation, 0.1 for a well-formed but
wrong one), and reports that the 3B base learns to search and self-verify while the 0.5B does not learn to
reason. Settings here: the R1-Zero template, accuracy 1.0 + format 0.1, TinyZero's every-number-once rule (carried
by the data's rows), 8 samples per prompt at T = 1.0, learning rate 1e-6, 1,024 new tokens. TinyZero's own runs
used PPO in veRL; this is the GRPO version. Not yet run at this scale here.

    r1jax train --config experiments/countdown.py:qwen2.5-3b --workdir DIR \\
        --config.model.checkpoint=/models/Qwen2.5-3B --config.data.train_files=/data/countdown \\
        --config.data.eval_files=/data/countdown --config.data.eval_files_split=train

`/data/countdown` is TinyZero's Countdown-Tasks-3to4 as downloaded (`target` / `nums` rows, Parquet); it has
only a train split, so hold out part of it yourself (or leave eval_files empty to evaluate on the built-in
countdown task's test split).

Args: the model (`qwen2.5-3b`, `qwen2.5-1.5b`), `runlocal` (2 steps, tiny sizes, f32: the tests' setting).
"""

import os

from r1jax import config_lib

ENTRY = "r1jax.trainers.grpo:train"
MODELS = ("qwen2.5-3b", "qwen2.5-1.5b")


def get_config(arg=None):
    parsed = config_lib.parse_arg(arg, positional="model", model="qwen2.5-3b", runlocal=False)
    if parsed.model not in MODELS:
        raise ValueError(f"config arg model={parsed.model!r}: this recipe has {list(MODELS)}")
    r1_zero = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r1_zero.py"))
    c = r1_zero.get_config(arg)
    c.data.task = "countdown"
    c.data.format = "countdown"
    c.rewards.weights = {"accuracy": 1.0, "format": 0.1}
    c.sampling.temperature = 1.0
    if not parsed.runlocal:
        c.rl.group_size = 8
        c.rl.prompts_per_step = 8  # 64 completions per update: ~77 GB at 3B on one device (docs/recipes.md)
        c.rl.num_steps = 500
        c.sampling.max_new_tokens = 1024
        c.optim.learning_rate = 1e-6
    else:
        c.model.dtype = "float32"
        c.model.remat = False
        c.sampling.max_prompt_len = 256
        c.sampling.max_new_tokens = 8
    return c
