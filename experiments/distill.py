"""Stage 6: distillation — a smaller student fine-tuned on the teacher's samples (paper 2.4).

The paper's method: SFT of the student on the data curated with DeepSeek-R1 (the stage-4 rejection-sampling
set), no RL. `kl=<α>` adds token-level KL towards the teacher (`direction=reverse` through the fused KL kernel,
`direction=forward` in plain XLA).

    r1jax train --config experiments/distill.py:tiny --workdir /tmp/r1jax/distill \\
        --config.teacher.checkpoint=/tmp/r1jax/general_rl/model \\
        --config.data.files=/tmp/r1jax/rejection_sampling/data.jsonl
    r1jax train --config experiments/distill.py:tiny,kl=0.5,direction=forward ...

Args: `tiny` (the default: a fresh `tiny-student`, or --config.init_from_scratch=False with a pretrained
student in model.checkpoint), `runlocal` (2 steps), `kl`, `direction`.
"""

from r1jax import config_lib
from r1jax.trainers import distill

ENTRY = "r1jax.trainers.distill:train"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False, kl=0.0, direction="reverse")
    c = distill.distill_config()
    c.template = "short"
    c.model.preset = "tiny-student"
    c.distill.kl_weight = arg.kl
    c.distill.kl_direction = arg.direction
    c.num_epochs = 2
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
