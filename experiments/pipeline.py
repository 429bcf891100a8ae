"""The full DeepSeek-R1 pipeline (paper section 2) on the built-in default, stage by stage, with one results table.

    stage0              base model (pretraining; the stand-in for DeepSeek-V3-Base)      experiments/pretrain.py
    r1_zero             R1-Zero: GRPO from the base, accuracy + format                   experiments/r1_zero.py
    cold_start          SFT of the base on readable long CoT                             experiments/cold_start.py
    reasoning_rl        GRPO from cold start, + language consistency                     experiments/reasoning_rl.py
    reasoning_rl_no_language  ablation: the same without the language reward          experiments/reasoning_rl.py
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
overridden (`--config.<stage>.<field>=...`). How the stages connect is declared below (`STAGES`): each stage's
experiment file, its arg, and which of its config fields take which earlier stage's outputs; r1jax/pipeline.py
fills those fields in at run time and runs the file's ENTRY. A stage whose export already exists is skipped, so
a re-run after a crash continues at the unfinished stage (whose trainer resumes from its own checkpoints).
Writes WORKDIR/results.md and WORKDIR/results.json.

Args: `tiny` (the default; 23 minutes for one seed on 2 CPU cores with 2% hypervisor steal, benchmarks/RESULTS.md),
`runlocal` (2 steps per stage, for tests), `task=<name>`.
"""

import os

import ml_collections

from r1jax import config_lib

ENTRY = "r1jax.pipeline:run"

# The stages, in order. `inputs` maps a field of the stage's config to an earlier stage's output (r1jax/pipeline.py
# OUTPUTS): 'model' (its export directory), 'tokenizer' (the export's tokenizer.model), 'data' (a data-set stage's
# JSONL, as a one-file tuple for a tuple field), 'wall_time_s' (its measured wall time, times the pipeline config
# field named third). `export` is what the stage leaves behind, and marks it complete: 'model', 'scorer' (a reward
# model: a model export with a reward head) or 'data'; only 'model' exports are evaluated. `report` is a JSON file
# of the stage's directory that goes into results.json under the stage's name.
STAGES = {
    "stage0": dict(experiment="pretrain", arg="{size},{task}", label="0 base (pretrained)"),
    "r1_zero": dict(
        experiment="r1_zero", arg="{size},{task}", label="1 R1-Zero", inputs={"model.checkpoint": ("stage0", "model")}
    ),
    "cold_start": dict(
        experiment="cold_start",
        arg="{size},{task}",
        label="2 cold start SFT",
        inputs={"model.checkpoint": ("stage0", "model")},
    ),
    "reasoning_rl": dict(
        experiment="reasoning_rl",
        arg="{size},{task}",
        label="3 reasoning RL",
        inputs={"model.checkpoint": ("cold_start", "model")},
    ),
    "reasoning_rl_no_language": dict(
        experiment="reasoning_rl",
        arg="{size},{task},language=False",
        label="3b reasoning RL without the language reward",
        inputs={"model.checkpoint": ("cold_start", "model")},
    ),
    "rejection_sampling": dict(
        experiment="rejection_sampling",
        arg="{size},{task}",
        label="4a rejection sampling (data)",
        inputs={"model.checkpoint": ("reasoning_rl", "model")},
        export="data",
        report="stats.json",
    ),
    "rejection_sft": dict(
        experiment="rejection_sft",
        arg="{size}",
        label="4 rejection-sampling SFT",
        inputs={"model.checkpoint": ("stage0", "model"), "data.files": ("rejection_sampling", "data")},
    ),
    "reward_model": dict(
        experiment="reward_model",
        arg="{size}",
        label="5a reward model",
        inputs={"model.checkpoint": ("rejection_sft", "model")},
        export="scorer",
        report="results.json",
    ),
    "general_rl": dict(
        experiment="general_rl",
        arg="{size},{task}",
        label="5 all-scenario RL = R1 (teacher)",
        inputs={"model.checkpoint": ("rejection_sft", "model"), "rewards.reward_model": ("reward_model", "model")},
    ),
    "student_base": dict(
        experiment="pretrain",
        arg="{size},{task}",
        label="6a student base",
        inputs={"tokenizer.path": ("stage0", "tokenizer")},  # the student shares the teacher's tokenizer
    ),
    "distill": dict(
        experiment="distill",
        arg="{size}",
        label="6 distilled student",
        inputs={
            "model.checkpoint": ("student_base", "model"),
            "data.files": ("rejection_sampling", "data"),
            "teacher.checkpoint": ("general_rl", "model"),
        },
    ),
    "student_rl": dict(
        experiment="r1_zero",
        arg="{size},{task}",
        label="6b student, R1-Zero RL (distill's wall time)",
        inputs={
            "model.checkpoint": ("student_base", "model"),
            "rl.max_time_s": ("distill", "wall_time_s", "student_rl_time_factor"),
        },
    ),
}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, arg: str) -> ml_collections.ConfigDict:
    return config_lib.load_module(os.path.join(_HERE, f"{name}.py")).get_config(arg)


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, tiny=True, runlocal=False, task="arithmetic")
    size = "runlocal" if arg.runlocal else "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0  # added to every stage's seed and the evaluation's: `--config.seed=1` is another seed's whole run
    c.stages = tuple(STAGES)  # the stages to run, in this order; a stage needs the exports of the ones it starts from
    c.plan = ml_collections.ConfigDict()  # STAGES as config data: what r1jax/pipeline.py executes
    for name, stage in STAGES.items():
        stage_arg = stage["arg"].format(size=size, task=f"task={arg.task}")
        c.plan[name] = ml_collections.ConfigDict(
            {
                "experiment": os.path.join(_HERE, f"{stage['experiment']}.py"),
                "arg": stage_arg,
                "label": stage["label"],
                "export": stage.get("export", "model"),
                "report": stage.get("report", ""),
                # (field, source stage, output[, factor field]): ConfigDict keys cannot hold the fields' dots
                "inputs": tuple((field, *source) for field, source in stage.get("inputs", {}).items()),
            }
        )
        c[name] = _load(stage["experiment"], stage_arg)
    # The pipeline's base stands in for a multilingual one: a fifth of its corpus' reasoning mixes Chinese words
    # in (r1jax/data/corpus.py `mix_language`), so R1-Zero can show the paper's language mixing and stage 3's
    # language reward has something to remove. The demo's base (pretrain.py:tiny) has none.
    for base in ("stage0", "student_base"):
        c[base].data.language_mix_rate = 0.2
    c.student_base.model.preset = "tiny-student"
    c.student_base.tokenizer.train_vocab_size = 0  # the teacher's tokenizer (stage0's), set at run time
    c.distill.init_from_scratch = False  # start from student_base, like the RL baseline
    c.student_rl.rl.num_steps = 100_000  # the wall-time budget (rl.max_time_s, set at run time) ends it
    c.student_rl.optim.decay = "constant"
    c.student_rl_time_factor = 1.0  # student_rl's wall-time budget = this × distill's measured training time
    # Plain-language comparisons of the evaluated stages (paper 2.3, 4.1): (stage a, stage b, what the line
    # compares[, the metric: pass@1 unless named]).
    c.comparisons = (
        ("reasoning_rl", "cold_start", "reasoning RL vs its cold start"),
        ("reasoning_rl", "reasoning_rl_no_language", "language reward vs none (paper 2.3.2's ablation)"),
        ("reasoning_rl", "reasoning_rl_no_language", "language reward vs none", "language_mixing"),
        ("cold_start", "stage0", "cold start vs the base (readability)", "format_rate"),
        ("distill", "general_rl", "student vs teacher"),
        ("distill", "student_rl", "distillation vs RL on the student (same wall time)"),
        ("distill", "student_base", "distillation vs the student's base"),
    )
    # The distillation set is sampled from the stage-3 checkpoint (paper 2.3.3 / 2.4), so that is the pass@1 a
    # distilled student approaches; the paper's 4.1 question is which student gets closer to it.
    c.closer_to_source = ml_collections.ConfigDict(
        {
            "source": "reasoning_rl",
            "sides": (("distill", "distillation", "distilled student"), ("student_rl", "RL", "RL student")),
        }
    )
    c.eval = _load("eval", f"tiny,task={arg.task}")  # one held-out evaluation for every stage's model
    c.eval.eval.num_prompts = 64
    c.eval.eval.num_samples = 4
    if arg.runlocal:
        c.student_rl.rl.num_steps = 2
        c.eval.data.num_eval = 4
        c.eval.eval.num_prompts = 4
        c.eval.eval.num_samples = 2
        c.eval.sampling.max_new_tokens = 16
    return c
