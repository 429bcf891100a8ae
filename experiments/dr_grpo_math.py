"""Recipe: Dr. GRPO on MATH levels 3–5 from Qwen2.5-Math, after "Understanding R1-Zero-Like Training: A Critical
Perspective" (Liu et al., 2025, arXiv 2503.20783; the Oat-Zero models).

Dr. GRPO removes GRPO's two biases: the per-response 1/|o_i| length normalisation (`rl.loss_type='dr_grpo'`: a
constant normaliser) and the std scaling of advantages (`rl.scale_rewards='none'`). The paper trains
Qwen2.5-Math-7B on MATH levels 3–5 with the Qwen-Math prompt and reports Oat-Zero-7B at 43.3 on AIME 2024 and
80.0 on MATH-500 (from the base's far lower numbers), with response length that does not keep growing on wrong
answers as it does under GRPO. The smaller Qwen2.5-Math-1.5B runs the same recipe. Settings here: the paper's
loss, prompt and data filter; 8 samples per prompt at T = 1.0, learning rate 1e-6, β = 0, batch and length ours.
Not yet run at this scale here.

    r1jax train --config experiments/dr_grpo_math.py:qwen2.5-math-1.5b --workdir DIR \\
        --config.model.checkpoint=/models/Qwen2.5-Math-1.5B \\
        --config.data.train_files=/data/MATH --config.data.eval_files=/data/MATH-500/test.jsonl

Args: the model (`qwen2.5-math-1.5b`, `qwen2.5-math-7b`), `runlocal` (2 steps, tiny sizes, f32: the tests').
"""

import os

from r1jax import config_lib

ENTRY = "r1jax.trainers.grpo:train"
PUBLISHED = {"qwen2.5-math-7b": {"aime24": 43.3, "math500": 80.0}, "qwen2.5-math-1.5b": {}}  # Oat-Zero, the paper


def get_config(arg=None):
    gsm8k = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r1_zero_gsm8k.py"))
    c = gsm8k.simplerl_zoo(arg, PUBLISHED, "math")
    c.data.levels = (3, 4, 5)
    c.rl.loss_type = "dr_grpo"
    c.rl.scale_rewards = "none"
    c.rl.beta = 0.0
    return c
