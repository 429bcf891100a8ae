"""Stage 0: a tiny base model for the built-in default (the stand-in for DeepSeek-V3-Base).

Trains a sentencepiece tokenizer on the built-in task corpus, then pretrains a tiny transformer on worked
solutions of mixed quality (some in the <think>/<answer> format, some in prose; some with a wrong step or
answer), so that the base model follows the format part of the time and is right part of the time.

    r1jax train --config experiments/pretrain.py:tiny --workdir /tmp/r1jax/stage0

Args: `tiny` (2-core CPU, minutes; the default) or `runlocal` (a few steps, for tests). `headroom` (arithmetic
only) swaps in a harder base: 3-digit sums (difficulty 6) whose corpus mixes one-step direct answers (often
wrong), direct answers followed by "Wait, let me re-check:" and the columns worked out, worked column solutions,
and worked solutions whose slip a re-check fixes, the tags on half of every style; R1-Zero from it has to move the
policy toward worked or re-checked solutions to gain accuracy. It is the base of `r1jax demo` (whose
`--variant two-digit` uses plain `tiny`):

    r1jax train --config experiments/pretrain.py:tiny,headroom --workdir /tmp/r1jax/stage0_headroom
    r1jax train --config experiments/r1_zero.py:tiny,headroom --workdir /tmp/r1jax/r1_zero_headroom \\
        --config.model.checkpoint=/tmp/r1jax/stage0_headroom/model
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import sft

ENTRY = "r1jax.trainers.sft:train"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False, task="arithmetic", headroom=False)
    if arg.headroom and arg.task != "arithmetic":
        raise ValueError(f"config arg headroom with task={arg.task!r}: only 'arithmetic' has the solution styles")
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
    if arg.headroom:
        c.data.difficulty = 6  # 3-digit + 3-digit: a ~1M model cannot add these in one step
        c.data.format_rate = 0.5  # the tags wrap half of every style, so format alone is not the story
        c.data.direct_rate = 0.4  # one-step answers: short, and often wrong ...
        c.data.direct_error_rate = 0.3  # ... in the corpus too
        c.data.checked_direct_rate = 0.2  # a one-step answer, then "Wait, let me re-check:" and the worked columns
        c.data.recheck_rate = 0.1  # worked solutions whose slip a re-check step catches and fixes
        # 760 steps of 32 rows × 128 tokens (every record fits: <= 126 tokens) instead of 900 of 16 × 256, to fit
        # the demo's time budget; a step costs about the same (benchmarks/measure/op_profile.py). Chosen on `validation`
        # over 640 steps of 16 × 256 (benchmarks/RESULTS.md).
        c.seq_len = 128
        c.batch_size = 32
        c.num_steps = 760
    if arg.runlocal:
        c.data.num_examples = 400
        c.tokenizer.train_vocab_size = 320
        c.seq_len = 128
        c.batch_size = 4
        c.num_steps = 4
        c.log_every = 2
        c.checkpoint.every = 2
    return c
