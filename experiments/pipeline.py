"""The full DeepSeek-R1 pipeline (paper section 2) on the built-in default, stage by stage, with one results table.

    stage0              base model (pretraining; the stand-in for DeepSeek-V3-Base)      experiments/pretrain.py
    r1_zero             R1-Zero: GRPO from the base, accuracy + format                   experiments/r1_zero.py
    cold_start          SFT of the base on readable long CoT                             experiments/cold_start.py
    reasoning_rl        GRPO from cold start, + language consistency                     experiments/reasoning_rl.py
    rejection_sampling  correct, readable samples of reasoning_rl + general data  experiments/rejection_sampling.py
    rejection_sft       SFT of the base on that set, two epochs                          experiments/rejection_sft.py
    reward_model        Bradley–Terry reward model on preference pairs                   experiments/reward_model.py
    general_rl          GRPO for all scenarios: rules + reward model  → DeepSeek-R1      experiments/general_rl.py
    student_base        a smaller base model (tiny-student, the teacher's tokenizer)     experiments/pretrain.py
    distill             SFT of student_base on the rejection-sampling set                experiments/distill.py
    student_rl          R1-Zero GRPO of student_base for distill's wall time (paper 4.1) experiments/r1_zero.py

    r1jax pipeline --config experiments/pipeline.py:tiny --workdir /tmp/r1jax/pipeline
    r1jax pipeline --config experiments/pipeline.py:tiny --workdir DIR --config.reasoning_rl.rl.num_steps=20

Each stage's settings are the named experiment file's config under the stage's name, so any field can be
overridden (`--config.<stage>.<field>=...`); the checkpoint paths that chain the stages are filled in at run
time. A stage whose export already exists is skipped, so a re-run after a crash continues at the unfinished
stage (whose trainer resumes from its own checkpoints). Writes WORKDIR/results.md and WORKDIR/results.json.

Args: `tiny` (the default; 15 minutes measured on 2 CPU cores, README), `runlocal` (2 steps per stage, for
tests), `task=<name>`.
"""

import os

import ml_collections

from r1jax import config_lib

ENTRY = "r1jax.pipeline:run"
STAGES = (
    "stage0",
    "r1_zero",
    "cold_start",
    "reasoning_rl",
    "rejection_sampling",
    "rejection_sft",
    "reward_model",
    "general_rl",
    "student_base",
    "distill",
    "student_rl",
)
_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, arg: str) -> ml_collections.ConfigDict:
    return config_lib.load_module(os.path.join(_HERE, f"{name}.py")).get_config(arg)


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False, task="arithmetic")
    size = "runlocal" if arg.runlocal else "tiny"
    task = f"task={arg.task}"
    c = ml_collections.ConfigDict()
    c.stages = STAGES  # the stages to run, in this order; a stage needs the exports of the ones it starts from
    c.stage0 = _load("pretrain", f"{size},{task}")
    c.r1_zero = _load("r1_zero", f"{size},{task}")
    c.cold_start = _load("cold_start", f"{size},{task}")
    c.reasoning_rl = _load("reasoning_rl", f"{size},{task}")
    c.rejection_sampling = _load("rejection_sampling", f"{size},{task}")
    c.rejection_sft = _load("rejection_sft", size)
    c.reward_model = _load("reward_model", size)
    c.general_rl = _load("general_rl", f"{size},{task}")
    c.student_base = _load("pretrain", f"{size},{task}")
    c.student_base.model.preset = "tiny-student"
    c.student_base.tokenizer.train_vocab_size = 0  # the teacher's tokenizer (stage0's), set at run time
    c.distill = _load("distill", size)
    c.distill.init_from_scratch = False  # start from student_base, like the RL baseline
    c.student_rl = _load("r1_zero", f"{size},{task}")
    c.student_rl.rl.num_steps = 100_000  # the wall-time budget (rl.max_time_s, set at run time) ends it
    c.student_rl.optim.decay = "constant"
    c.student_rl_time_factor = 1.0  # student_rl's wall-time budget = this × distill's measured training time
    c.eval = _load("eval", f"tiny,{task}")  # one held-out evaluation for every stage's model
    c.eval.eval.num_prompts = 64
    c.eval.eval.num_samples = 4
    if arg.runlocal:
        c.student_rl.rl.num_steps = 2
        c.eval.data.num_eval = 4
        c.eval.eval.num_prompts = 4
        c.eval.eval.num_samples = 2
        c.eval.sampling.max_new_tokens = 16
    return c
