"""Stage 2: cold start — SFT of the base model on a small set of clean, readable long-CoT samples (paper 2.3.1).

The samples are in the paper's output format `|special_token|<reasoning_process>|special_token|<summary>`,
rendered as `<think> reasoning </think> <answer> summary </answer>` (see r1jax/data/corpus.py for the mapping);
for the built-in default they are the tasks' worked solutions, all correct and all in the format. The loss is on
response tokens only, over packed rows.

    r1jax train --config experiments/cold_start.py:tiny --workdir /tmp/r1jax/cold_start \\
        --config.model.checkpoint=/tmp/r1jax/stage0/model
    r1jax train --config experiments/cold_start.py:model=qwen2.5-1.5b --workdir DIR \\
        --config.model.checkpoint=/path/to/Qwen2.5-1.5B --config.data.files=cold_start.jsonl

Args: `tiny` (the built-in default, the default arg), `runlocal` (2 steps, for tests), or `model=<preset>` for a
real checkpoint, whose cold-start data come from files (prompt / response fields).
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import sft

ENTRY = "r1jax.trainers.sft:train"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, positional="model", model="tiny", runlocal=False, task="arithmetic")
    c = sft.sft_config()
    c.model.preset = arg.model
    c.data.task = arg.task
    if arg.model == "tiny":
        c.template = "short"
        c.data.source = "cold_start"
        c.data.difficulty = tiny_difficulty(arg.task)  # the distribution of every tiny stage
        # A small set, as in the paper ("thousands" there, for a model that reads far more): 500 readable CoT
        # samples, about 2 epochs. It teaches the format; a longer cold start (120 steps on 2000 samples) already
        # solves the 2-digit task (held-out pass@1 1.0) and leaves reasoning RL nothing to show.
        c.data.num_examples = 500
        c.data.seed = 21  # not the pretraining corpus' seed, nor the RL prompts'
        # A share of the set mixes Chinese words into the reasoning (r1jax/data/corpus.py `mix_language`), so the
        # cold-started policy mixes languages now and then and stage 3's language reward has work to do.
        c.data.language_mix_rate = 0.3
        c.seq_len = 256
        c.batch_size = 16
        c.num_steps = 16
        c.optim.learning_rate = 5e-4
        c.optim.warmup_steps = 10
        c.checkpoint.every = 8
        c.log_every = 2
    else:
        c.template = "r1_zero"
        c.data.source = "files"
        c.model.dtype = "bfloat16"
        c.model.remat = True
        c.seq_len = 8192
        c.batch_size = 32
        c.num_epochs = 2
        c.optim.learning_rate = 1e-5
        c.optim.warmup_steps = 20
    if arg.runlocal:
        c.data.num_examples = 64
        c.seq_len = 128
        c.batch_size = 4
        c.num_steps = 2
        c.log_every = 1
        c.checkpoint.every = 1
    return c
