"""Stage 5: RL for all scenarios (paper 2.3.4) — the final DeepSeek-R1 stage.

GRPO from the rejection-sampling SFT model on a mix of reasoning prompts, scored by the rule rewards (accuracy,
format, language consistency), and general prompts, scored by the reward model: helpfulness on the summary (the
text after </think>) and harmlessness on the whole response.

    r1jax train --config experiments/general_rl.py:tiny --workdir /tmp/r1jax/general_rl \\
        --config.model.checkpoint=/tmp/r1jax/rejection_sft/model \\
        --config.rewards.reward_model=/tmp/r1jax/reward_model/model

Args: as experiments/r1_zero.py (`tiny`, `runlocal`, or a real model preset name with model.checkpoint).
"""

import os

from r1jax import config_lib

ENTRY = "r1jax.trainers.grpo:train"


def get_config(arg=None):
    r1_zero = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "r1_zero.py"))
    c = r1_zero.get_config(arg)
    parsed = config_lib.parse_arg(arg, positional="model", model="tiny", runlocal=False, task="arithmetic")
    c.rewards.weights = {"accuracy": 1.0, "format": 0.5, "language": 1.0}
    c.rewards.general_weights = {"helpfulness": 1.0, "harmlessness": 1.0}
    c.data.num_general = 5000  # a quarter of the prompts are general ones
    c.data.num_train = 15000
    if parsed.model == "tiny":
        c.sampling.max_prompt_len = 48  # general prompts spell words out letter by letter in the tiny vocabulary
        c.optim.learning_rate = 5e-5
        if not parsed.runlocal:
            c.rl.num_steps = 40
    if parsed.runlocal:
        c.data.num_general = 16
        c.data.num_train = 48
    return c
