"""Stage 3: reasoning-oriented RL — GRPO from the cold-start checkpoint (paper 2.3.2).

The same GRPO as R1-Zero, with the language-consistency reward (the share of the chain of thought written in the
target language) added to the accuracy and format rewards: the rewards are summed.

    r1jax train --config experiments/reasoning_rl.py:tiny --workdir /tmp/r1jax/reasoning_rl \\
        --config.model.checkpoint=/tmp/r1jax/cold_start/model

Args: as experiments/r1_zero.py (`tiny`, `runlocal`, or a real model preset name with model.checkpoint), and
`language=False` for the paper's ablation: the same stage without the language-consistency reward (its effect on
language mixing and its accuracy cost; the pipeline runs both).
"""

import os

from r1jax import config_lib

ENTRY = "r1jax.trainers.grpo:train"


def get_config(arg=None):
    r1_zero = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r1_zero.py"))
    parsed = config_lib.parse_arg(
        arg, positional="model", model="tiny", runlocal=False, task="arithmetic", language=True
    )
    c = r1_zero.get_config(",".join(i for i in (arg or "").split(",") if i.partition("=")[0].strip() != "language"))
    c.rewards.weights = {"accuracy": 1.0, "format": 0.5, **({"language": 1.0} if parsed.language else {})}
    c.rewards.language = "en"
    if parsed.model == "tiny" and not parsed.runlocal:
        c.rl.num_steps = 40
        c.optim.learning_rate = 5e-5  # a cold-started policy: smaller steps than from the raw base model
    return c
