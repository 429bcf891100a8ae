"""Stage 4: SFT of the base model for two epochs on the rejection-sampling set (paper 2.3.3).

As in the paper, the data curated from the stage-3 policy train the *base* model (stage 0), not the RL policy.

    r1jax train --config experiments/rejection_sft.py:tiny --workdir /tmp/r1jax/rejection_sft \\
        --config.model.checkpoint=/tmp/r1jax/stage0/model \\
        --config.data.files=/tmp/r1jax/rejection_sampling/data.jsonl

Args: `tiny` (the default), `runlocal` (2 steps, for tests).
"""

from r1jax import config_lib
from r1jax.trainers import sft

ENTRY = "r1jax.trainers.sft:train"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False)
    c = sft.sft_config()
    c.template = "short"
    c.data.source = "files"  # data.files: the rejection-sampling data set (WORKDIR/rejection_sampling/data.jsonl)
    c.num_epochs = 2  # the paper's two epochs; the step count follows from the packed data
    c.seq_len = 256
    c.batch_size = 16
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 10
    c.checkpoint.every = 100
    c.log_every = 10
    if arg.runlocal:
        c.num_epochs = 0
        c.num_steps = 2
        c.seq_len = 128
        c.batch_size = 4
        c.log_every = 1
        c.checkpoint.every = 1
    return c
