"""Recipe: distillation SFT of a Qwen2.5 student on reasoning traces you have on disk (paper section 2.4).

DeepSeek-R1's distilled models are plain SFT of a smaller base on about 800k samples written by R1, with no RL.
What the paper reports (Table 5; pass@1 at T = 0.6 over k samples):

    DeepSeek-R1-Distill-Qwen-1.5B (from Qwen2.5-Math-1.5B)   AIME 2024 28.9   MATH-500 83.9
    DeepSeek-R1-Distill-Qwen-7B   (from Qwen2.5-Math-7B)     AIME 2024 55.5   MATH-500 92.8

Open trace sets are far smaller than 800k samples, so expect less. The traces are chat rows as the common sets
ship them — `messages` with role / content (OpenR1-Math and most SFT sets) or ShareGPT `conversations` with
from / value (Bespoke-Stratos) — read by r1jax.data.formats.load_traces: the user turn goes through the prompt
template, the assistant turn (reasoning and answer as written) is the target; loss on response tokens only,
packed rows, 2 epochs (the paper's SFT stages). Not yet run at this scale here.

    r1jax train --config experiments/distill_traces.py:qwen2.5-math-1.5b --workdir DIR \\
        --config.model.checkpoint=/models/Qwen2.5-Math-1.5B --config.data.files=/data/traces

Args: the student (`qwen2.5-math-1.5b`, `qwen2.5-math-7b`, `qwen2.5-1.5b`), `runlocal` (2 steps, tiny sizes, f32).
"""

from r1jax import config_lib
from r1jax.trainers import sft

ENTRY = "r1jax.trainers.sft:train"
PUBLISHED = {"qwen2.5-math-1.5b": {"aime24": 28.9, "math500": 83.9}, "qwen2.5-math-7b": {"aime24": 55.5,
             "math500": 92.8}, "qwen2.5-1.5b": {}}  # DeepSeek-R1-Distill-Qwen, the paper's Table 5


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, positional="model", model="qwen2.5-math-1.5b", runlocal=False)
    if arg.model not in PUBLISHED:
        raise ValueError(f"config arg model={arg.model!r}: this recipe has {sorted(PUBLISHED)}")
    c = sft.sft_config()
    c.model.preset = arg.model
    c.template = "qwen_math"
    c.data.source = "traces"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.seq_len = 16384  # R1 traces run to thousands of tokens; longer ones are truncated (counted)
    c.batch_size = 16
    c.num_epochs = 2
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.0
    c.checkpoint.every = 500
    if arg.runlocal:
        c.model.dtype = "float32"
        c.model.remat = False
        c.seq_len = 256
        c.batch_size = 4
        c.num_epochs = 0
        c.num_steps = 2
        c.log_every = 1
        c.checkpoint.every = 1
    return c
