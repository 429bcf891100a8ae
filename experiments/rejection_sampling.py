"""Stage 4 data: rejection sampling from the reasoning-RL checkpoint (paper 2.3.3).

Samples M completions per prompt, keeps the correct ones whose chain of thought is readable (one language, no
overlong paragraph, no code block), de-duplicates, mixes in non-reasoning data (built-in general prompts with
their helpful answers, a quarter of the set as in the paper), and writes WORKDIR/data.jsonl (prompt / response)
and WORKDIR/stats.json (the kept fraction of every filter).

    r1jax train --config experiments/rejection_sampling.py:tiny --workdir /tmp/r1jax/rejection_sampling \\
        --config.model.checkpoint=/tmp/r1jax/reasoning_rl/model

Args: `tiny` (the default), `runlocal` (two tiny chunks, for tests), `task=<name>`.
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import rejection_sampling

ENTRY = "r1jax.trainers.rejection_sampling:run"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False, task="arithmetic")
    c = rejection_sampling.rejection_sampling_config()
    c.template = "short"
    c.data.task = arg.task
    c.data.difficulty = tiny_difficulty(arg.task)  # the distribution of every tiny stage
    c.data.num_prompts = 512
    c.sampling.num_samples = 4
    c.sampling.prompts_per_batch = 32
    c.sampling.temperature = 1.0  # diverse samples; the filters keep the good ones
    c.sampling.top_p = 1.0
    c.sampling.max_new_tokens = 96
    c.sampling.max_prompt_len = 32
    c.filters.max_paragraph_words = 120
    if arg.runlocal:
        c.data.num_prompts = 6
        c.sampling.num_samples = 2
        c.sampling.prompts_per_batch = 4
        c.sampling.max_new_tokens = 16
        c.non_reasoning.min_examples = 16  # 16-token samples are rarely complete: keep the SFT set non-empty
    return c
