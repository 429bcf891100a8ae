"""Stage 0: a tiny base model for the built-in default (the stand-in for DeepSeek-V3-Base).

Trains a sentencepiece tokenizer on the built-in task corpus, then pretrains a tiny transformer on worked
solutions of mixed quality (some in the <think>/<answer> format, some in prose; some with a wrong step or
answer), so that the base model follows the format part of the time and is right part of the time.

    r1jax train --config experiments/pretrain.py:tiny --workdir /tmp/r1jax/stage0

Args: `tiny` (2-core CPU, minutes; the default) or `runlocal` (a few steps, for tests).
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import sft

ENTRY = "r1jax.trainers.sft:train"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False, task="arithmetic")
    c = sft.sft_config()
    c.init_from_scratch = True
    c.model.preset = "tiny"
    c.tokenizer.train_vocab_size = 384
    c.template = "short"
    c.data.source = "pretrain"
    c.data.task = arg.task
    c.data.difficulty = tiny_difficulty(arg.task)
    c.data.num_examples = 24_000
    c.data.format_rate = 0.3  # the base answers in the R1 format only part of the time ...
    c.data.error_rate = 0.15  # ... and some worked solutions are wrong
    c.seq_len = 256
    c.batch_size = 16
    c.num_steps = 600
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 20
    c.checkpoint.every = 400
    if arg.runlocal:
        c.data.num_examples = 400
        c.tokenizer.train_vocab_size = 320
        c.seq_len = 128
        c.batch_size = 4
        c.num_steps = 4
        c.log_every = 2
        c.checkpoint.every = 2
    return c
