"""Recipe: R1-Zero on GSM8K from a Qwen2.5 base model, after SimpleRL-Zoo (Zeng et al., 2025, arXiv 2503.18892).

What the paper reports (zero RL from the base model, GSM8K test accuracy, before → after):

    Qwen2.5-0.5B   36.7 → 49.5
    Qwen2.5-1.5B   55.7 → 74.4

Settings here, from our reading of the paper's setup (verify against its appendix before comparing numbers): a
correctness-only reward (the paper drops the strict format reward, which held small models back), a step-by-step
prompt with the answer in \\boxed{}, 8 samples per prompt at T = 1.0, learning rate 1e-6, a small KL term; batch
and length are ours, sized for one 80 GB GPU. Nothing has been run at this scale here yet: this is a starting
point with the number to compare against, not a reproduced result.

    r1jax train --config experiments/r1_zero_gsm8k.py:qwen2.5-0.5b --workdir DIR \\
        --config.model.checkpoint=/models/Qwen2.5-0.5B \\
        --config.data.train_files=/data/gsm8k --config.data.eval_files=/data/gsm8k

`/data/gsm8k` is GSM8K as downloaded (a Hub export such as `main/train-00000-of-00001.parquet`, a
`save_to_disk` directory, or JSONL with `question` / `answer` ending in `#### 42`); the train and test splits
are read from it (`data.train_files_split`, `data.eval_files_split`).

Args: the model (`qwen2.5-0.5b`, `qwen2.5-1.5b`), `runlocal` (2 steps, tiny sizes, f32: the tests' setting).
"""

import os

from r1jax import config_lib

ENTRY = "r1jax.trainers.grpo:train"
PUBLISHED = {"qwen2.5-0.5b": (36.7, 49.5), "qwen2.5-1.5b": (55.7, 74.4)}  # GSM8K test, SimpleRL-Zoo


def simplerl_zoo(arg, models, data_format: str):
    """The SimpleRL-Zoo-style zero-RL settings shared by the GSM8K and MATH recipes."""
    parsed = config_lib.parse_arg(arg, positional="model", model=next(iter(models)), runlocal=False)
    if parsed.model not in models:
        raise ValueError(f"config arg model={parsed.model!r}: this recipe has {sorted(models)}")
    r1_zero = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r1_zero.py"))
    c = r1_zero.get_config(arg)
    c.data.format = data_format
    c.template = "qwen_math"
    c.rewards.weights = {"accuracy": 1.0}  # correctness only
    c.rewards.answer_extract = ("boxed",)
    c.rl.loss_type = "grpo"
    c.rl.epsilon_high = 0.2
    c.rl.beta = 1e-4
    c.sampling.temperature = 1.0
    if not parsed.runlocal:
        c.rl.group_size = 8
        c.rl.prompts_per_step = 16  # 128 completions per update: ~40 / 66 GB at 0.5B / 1.5B (docs/recipes.md)
        c.rl.num_steps = 500
        c.sampling.max_new_tokens = 1024
        c.optim.learning_rate = 1e-6
    else:
        c.model.dtype = "float32"  # CPU
        c.model.remat = False
        c.sampling.max_prompt_len = 256
        c.sampling.max_new_tokens = 8
    return c


def get_config(arg=None):
    return simplerl_zoo(arg, PUBLISHED, "gsm8k")
