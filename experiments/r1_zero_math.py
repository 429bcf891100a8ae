"""Recipe: R1-Zero on MATH from a Qwen2.5 base model, evaluated on MATH-500, after SimpleRL-Zoo (arXiv 2503.18892).

What the paper reports (zero RL from the base model, MATH-500 accuracy, before → after):

    Qwen2.5-0.5B   15.8 → 34.4
    Qwen2.5-1.5B   29.6 → 59.0

Settings: those of experiments/r1_zero_gsm8k.py (correctness-only reward, \\boxed{} answers, 8 samples per prompt
at T = 1.0), on MATH's training problems; `data.levels` restricts them (the paper matches problem difficulty to the
model: easier levels for smaller models). Not yet run at this scale here.

    r1jax train --config experiments/r1_zero_math.py:qwen2.5-1.5b --workdir DIR \\
        --config.model.checkpoint=/models/Qwen2.5-1.5B \\
        --config.data.train_files=/data/MATH --config.data.eval_files=/data/MATH-500/test.jsonl

MATH as downloaded: `problem` / `solution` rows with the answer in \\boxed{} (a save_to_disk directory, a Hub
export, or JSONL); MATH-500's `test.jsonl` (with its `answer` field) for evaluation.

Args: the model (`qwen2.5-0.5b`, `qwen2.5-1.5b`), `runlocal` (2 steps, tiny sizes, f32: the tests' setting).
"""

import os

from r1jax import config_lib

ENTRY = "r1jax.trainers.grpo:train"
PUBLISHED = {"qwen2.5-0.5b": (15.8, 34.4), "qwen2.5-1.5b": (29.6, 59.0)}  # MATH-500, SimpleRL-Zoo


def get_config(arg=None):
    gsm8k = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r1_zero_gsm8k.py"))
    return gsm8k.simplerl_zoo(arg, PUBLISHED, "math")


def sweep(add):
    """Three seeds of the recipe (`r1jax sweep ...`; `--print-launch tpu` prints the command for every worker)."""
    for seed in (0, 1, 2):
        add(seed=seed)
