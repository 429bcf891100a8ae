"""Stage 5a: a reward model for general prompts (paper 2.3.4), trained on preference pairs (Bradley–Terry).

For the built-in default the pairs are synthetic (r1jax/data/preferences.py): a helpful, well-formatted answer
against a refusal, a wrong answer, harmful-marker text, harmful reasoning or an unformatted answer. Reports the
held-out pairwise accuracy before and after training (WORKDIR/results.json).

    r1jax train --config experiments/reward_model.py:tiny --workdir /tmp/r1jax/reward_model \\
        --config.model.checkpoint=/tmp/r1jax/rejection_sft/model
    ... --config.data.source=files --config.data.files=prefs.jsonl    # real (prompt, chosen, rejected) pairs

Args: `tiny` (the default), `runlocal` (2 steps, for tests).
"""

from r1jax import config_lib
from r1jax.trainers import reward_model

ENTRY = "r1jax.trainers.reward_model:train"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False)
    c = reward_model.reward_model_config()
    c.template = "short"
    c.data.num_pairs = 2000
    c.seq_len = 128
    c.batch_size = 16
    c.num_steps = 150
    c.eval_every = 50
    c.optim.learning_rate = 3e-4
    c.checkpoint.every = 50
    if arg.runlocal:
        c.data.num_pairs = 40
        c.seq_len = 96
        c.batch_size = 4
        c.num_steps = 2
        c.eval_every = 0
        c.log_every = 1
        c.checkpoint.every = 1
    return c
