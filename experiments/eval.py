"""Evaluation (paper section 3): pass@1 averaged over k samples at T = 0.6 / top-p 0.95, cons@k, greedy
accuracy, format rate and mean length on a held-out split; writes WORKDIR/eval.json and eval.md.

    r1jax eval --config experiments/eval.py:tiny --workdir /tmp/r1jax/eval \\
        --config.model.checkpoint=/tmp/r1jax/r1_zero/model

Args: `tiny` (built-in task, CPU) or a real model preset name with `--config.data.eval_files=...`.
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import grpo

ENTRY = "r1jax.evals:run"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, positional="model", model="tiny", task="arithmetic", k=4)
    c = grpo.grpo_config()
    c.model.preset = arg.model
    c.data.task = arg.task
    c.eval.num_samples = arg.k
    if arg.model == "tiny":
        c.data.difficulty = tiny_difficulty(arg.task)
        c.template = "short"
        c.sampling.max_new_tokens = 64
        c.sampling.max_prompt_len = 32
        c.sampling.prompt_bucket = 16
        c.eval.num_prompts = 128
    else:
        c.template = "r1_zero"
        c.model.dtype = "bfloat16"
        c.sampling.max_new_tokens = 32768  # the paper's maximum generation length
        c.sampling.max_prompt_len = 1024
        c.eval.num_samples = max(arg.k, 16)
    return c
