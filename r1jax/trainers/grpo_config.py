"""The GRPO trainer's config: every field it reads, declared once with a default and a comment, and the checks
that run before anything compiles (each error names the field and the value).

Experiment files (experiments/r1_zero.py, reasoning_rl.py, general_rl.py) start from `grpo_config()` and change
values; a field they set that is not declared here fails, because configs are locked.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from r1jax import grpo, rollouts, sampling, sharding, train_state
from r1jax import rewards as rewards_lib
from r1jax.data import formats, provenance
from r1jax.models import config_from_hf, get_preset
from r1jax.trainers.loop import checkpoint_config, validate_checkpoint  # the loop's, as every trainer's

GENERAL_REWARDS = ("helpfulness", "harmlessness")
SAMPLER_DTYPES = ("", "float32", "bfloat16", "float16")  # reward-model scores of general prompts (paper 2.3.4)

def rl_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.group_size = 8  # G, completions per prompt
    c.prompts_per_step = 16  # P, so B = P·G completions per rollout batch
    c.num_steps = 100  # rollout batches
    c.mu = 1  # μ, optimizer updates per rollout batch (μ = 1: ratio ≡ 1, no old-log-prob pass)
    c.beta = 0.0  # β, k3 KL coefficient (0 skips the reference forward entirely)
    # The update's and the log-prob passes' forward runs each prompt once for its G samples (KV cache, like the
    # sampler's prefill) instead of G times; equal up to float rounding (models/logprobs.py: sequence_logps). On in
    # experiments/r1_zero.py's real-model presets; off here, so the tiny presets' published runs stay as measured
    c.shared_prompt_forward = False
    c.epsilon_low = 0.2  # ε_low
    c.epsilon_high = 0.2  # ε_high (DAPO clip-higher: 0.28); with loss_type='cispo' it is ε_max, the ratio cap (5.0)
    # 'grpo' | 'dapo' | 'dr_grpo' | 'bnpo' | 'luspo' | 'cispo' | 'sapo' | 'vespo' (r1jax/losses.py: SURROGATES)
    c.loss_type = "dapo"
    c.delta = float("inf")  # δ, INTELLECT-2's upper clamp on the clipped losses' unclipped ratio (4.0); inf: off
    c.scale_rewards = "group"  # 'group' | 'batch' | 'none' (Dr. GRPO)
    c.adv_eps = 1e-4
    c.importance_sampling_level = "token"  # 'token' | 'sequence'
    c.kl_bias_correction = False  # weight k3 by the ratio (DeepSeek-V3.2); R1 used plain k3
    # Rollout-policy corrections (r1jax/grpo.py; TRL's vllm_importance_sampling_* with sampler_ for vllm_), from
    # the sampler's log-probs (Rollout.logps_bt): w = π_old / π_sampler weights each token's policy term.
    # TRL's correction default True acts on vLLM rollouts only; r1jax's sampler runs the trainer's own code, TRL's
    # use_vllm=False case, so it is off here. Mode and bounds default to TRL's. With the correction or the off-policy
    # mask on, the step also logs the sampler-trainer mismatch and the weights (rl/sampler/*).
    c.sampler_is_correction = False
    # 'token_truncate' (TIS) | 'token_mask' (IcePop, both bounds) | 'sequence_truncate' | 'sequence_mask' (MIS)
    c.sampler_is_mode = "sequence_mask"
    c.sampler_is_clip_min = 0.0  # C_min (0: no lower bound, TRL's None)
    c.sampler_is_clip_max = 3.0  # C_max (inf: no upper bound)
    c.off_policy_mask_threshold = float("inf")  # δ (DeepSeek-V3.2 eq. 9): drop A<0 rows, mean log π_s/π_θ > δ; inf: off
    c.top_entropy_quantile = 1.0  # ρ (Beyond the 80/20 rule: 0.2): train only the top-ρ tokens by entropy; 1: all
    c.sapo_temperature_pos = 1.0  # τ_pos of loss_type='sapo' (A > 0)
    c.sapo_temperature_neg = 1.05  # τ_neg (A <= 0)
    c.vespo_k_pos = 2.0  # k₊ of loss_type='vespo', φ(w) = e^λ w^k e^(-λw) (A >= 0)
    c.vespo_lambda_pos = 3.0  # λ₊
    c.vespo_k_neg = 3.0  # k₋ (A < 0)
    c.vespo_lambda_neg = 2.0  # λ₋
    c.entropy_coef = 0.0  # c_H, entropy bonus: loss − c_H·H over the trained tokens (0: off)
    c.use_adaptive_entropy = False  # Skywork-OR1's controller on c_H (not yet carried by the trainer's state)
    c.entropy_target = 0.2  # H_target (nats) of the adaptive controller
    c.entropy_coef_delta = 0.005  # its step on c_H per update
    c.entropy_coef_min = 0.0  # its bounds on c_H
    c.entropy_coef_max = 1.0
    c.mask_truncated = False  # drop completions without EOS from the loss
    c.dynamic_sampling = False  # DAPO: drop zero-spread groups, refill from further prompts
    c.max_resample_rounds = 2  # cap on extra sampling rounds per step with dynamic_sampling
    # Asynchronous rollouts (trainers/grpo.py, rollouts.RolloutQueue): step t trains on rollouts sampled with the
    # parameters after max(0, t - 1 - s) updates, s = max_staleness, and step t + s is sampled while step t
    # trains. 0: the synchronous trainer, bit for bit. Waiting rollouts are checkpointed, so resume stays exact.
    c.max_staleness = 0
    c.sampler_devices = 0  # > 0: the last N devices sample (their own data-parallel mesh, parameters copied to them
    # after each update) and mesh.shape covers the rest; 0: sampler and trainer share every device
    c.sampler_dtype = ""  # '' = the model's; 'bfloat16': rollouts in bf16 (parameters cast on the copy), trainer as is
    c.max_time_s = 0.0  # > 0: stop (save, evaluate, export) once the loop has run this long (wall-time budgets)
    c.update(overrides)
    return c


def sampling_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 1.0  # rollouts sample from π_θ at this temperature; log-probs use the same one
    c.top_p = 1.0
    c.top_k = 0
    c.max_new_tokens = 256
    c.max_prompt_len = 256  # longer prompts are refused when the data is read
    c.prompt_bucket = 32  # prompts are left-padded to bucket·2^k tokens: few shapes, few compilations
    c.scheduler = "static"  # 'static': P·G rows decode as one batch; 'continuous': num_slots rows refilled as rows stop
    c.num_slots = 0  # continuous decode slots (0 = P·G); a multiple of the data-parallel size
    c.update(overrides)
    return c


def data_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "arithmetic"  # built-in task (r1jax.data.tasks) or 'gym:<reasoning_gym name>'; scores answers
    c.difficulty = 1
    c.num_train = 20_000  # built-in task: generated training prompts
    c.num_eval = 128  # built-in task: held-out prompts
    c.num_general = 0  # built-in general prompts (r1jax.data.preferences) mixed into training (paper 2.3.4)
    c.general_seed = 17
    c.train_seed = 1
    c.eval_seed = 2  # the draw of held-out prompts (their split is by content: eval.split)
    c.train_files = ()  # files or directories (r1jax.data.formats); replace the built-in task's training prompts
    c.eval_files = ()
    c.format = "jsonl"  # row format of train_files / eval_files: 'jsonl' (the fields below) | 'gsm8k' | 'math' | ...
    c.train_files_split = "train"  # split read from a DatasetDict (save_to_disk) or Hub-export directory
    c.eval_files_split = "test"
    c.levels = ()  # 'math' format: keep only these MATH levels (e.g. (3, 4, 5), Dr. GRPO's setting); () = all
    c.question_field = "question"
    c.answer_field = "answer"
    c.id_field = "id"
    c.on_error = "raise"  # malformed rows: 'raise' (file and line named) or 'skip' (counted)
    c.update(overrides)
    return c


def eval_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every = 0  # steps between held-out evaluations (0 = only at the end)
    c.num_prompts = 64  # 0: no evaluation (benchmarks)
    c.num_samples = 4  # k for pass@1 (mean over k samples) and cons@k
    c.temperature = 0.6  # the paper's protocol: T = 0.6, top-p = 0.95
    c.top_p = 0.95
    c.greedy = True  # also greedy accuracy
    c.split = "test"  # built-in tasks' content split: 'test' for reported numbers, 'validation' for choosing settings
    c.update(overrides)
    return c


def rewards_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # name -> weight, summed: accuracy | format | language | overlong | code | 'module:function'
    c.weights = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.5})
    c.answer_extract = ("answer_tag",)  # where the final answer must be (R1: a specified format)
    c.format_mode = "strict"  # 'strict' | 'lenient'
    c.language = "en"  # target language of the language-consistency reward (paper 2.3.2)
    c.overlong_buffer = 64  # DAPO soft overlong punishment over the last N tokens (when 'overlong' is weighted)
    c.timeout_s = 10.0  # per completion and reward; a timeout or error makes the completion unscorable
    c.num_processes = 2  # worker processes for rewards that may hang (math-verify)
    # General prompts (task 'general') get these instead of `weights` (paper 2.3.4): 'helpfulness' (the reward
    # model on the summary, the text after </think>) and 'harmlessness' (the reward model on the whole response).
    c.general_weights = ml_collections.ConfigDict({})
    c.reward_model = ""  # a reward_model export (trainers/reward_model.py), needed by general_weights
    c.reward_model_timeout_s = 300.0  # per batch (the first call compiles)
    c.update(overrides)
    return c


def grpo_config() -> ml_collections.ConfigDict:
    """Every field the GRPO trainer reads, with defaults; experiment files change values, never add fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = train_state.model_config()
    c.tokenizer = train_state.tokenizer_config()
    c.template = "r1_zero"  # r1jax.tokenizer.TEMPLATES
    c.response_prefix = ""  # text forced at the start of every completion (e.g. '<think>')
    c.data = data_config()
    c.rl = rl_config()
    c.sampling = sampling_config()
    c.rewards = rewards_config()
    c.optim = train_state.optimizer_config()
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})  # ('data', 'fsdp', 'tensor'); -1 = the rest
    c.kernels = ml_collections.ConfigDict({"implementation": "auto"})  # 'auto' | 'xla' | 'chunked' | 'pallas'
    c.checkpoint = checkpoint_config()
    c.eval = eval_config()
    c.log_every = 1
    c.export = True  # write WORKDIR/model (HF safetensors + tokenizer) at the end, for the next stage
    # stop_after_steps: save and return after this many steps of this process, as on SIGTERM (0 = off; resume tests)
    c.debug = ml_collections.ConfigDict({"inject_nan_steps": (), "step_sleep_s": 0.0, "stop_after_steps": 0})
    return c


def validate_rl(c) -> None:
    """The `rl` fields' checks: sizes, and the loss options through the loss's own config (r1jax/losses.py)."""
    rl = c.rl
    if rl.group_size < 2:
        raise ValueError(f"rl.group_size={rl.group_size}: GRPO needs at least 2 samples per prompt")
    if rl.prompts_per_step < 1:
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step}: must be >= 1")
    if rl.num_steps < 1:
        raise ValueError(f"rl.num_steps={rl.num_steps}: must be >= 1")
    if rl.mu < 1:
        raise ValueError(f"rl.mu={rl.mu}: must be >= 1")
    rollouts.loss_config(c)  # β, ε, loss_type, ...: the loss's frozen config, validated in its one place
    if rl.use_adaptive_entropy:
        raise ValueError(
            "rl.use_adaptive_entropy=True: the controller's state (losses.EntropyControl) is not yet carried by the "
            "trainer's state across updates and checkpoints; use a constant rl.entropy_coef"
        )
    if rl.scale_rewards not in grpo.SCALE_REWARDS:
        raise ValueError(f"rl.scale_rewards={rl.scale_rewards!r}: expected one of {grpo.SCALE_REWARDS}")


def validate_data(c) -> None:
    """The `data` and `rewards` fields' checks that need no files: the task, the format, the general prompts'
    rewards."""
    if not c.data.train_files:
        rewards_lib.get_task(c.data.task)  # raises naming the task when unknown
    formats.check_format(c.data.format)
    if c.data.levels and c.data.format != "math":
        raise ValueError(f"data.levels={tuple(c.data.levels)}: only format 'math' has levels, not {c.data.format!r}")
    for name in c.rewards.general_weights:
        if name not in GENERAL_REWARDS:
            raise ValueError(f"rewards.general_weights.{name}: expected names in {GENERAL_REWARDS}")
    if c.rewards.general_weights and not c.rewards.reward_model:
        raise ValueError("rewards.reward_model='': rewards.general_weights needs a reward model export directory")
    if c.data.num_general and not c.rewards.general_weights:
        raise ValueError(f"data.num_general={c.data.num_general}: general prompts need rewards.general_weights")


def validate(c, num_devices: int | None = None) -> None:
    """Every check that can fail before compiling; errors name the field and value. `validate_shapes`, then what
    needs the live devices, processes and files: the starting checkpoint, data files."""
    validate_shapes(c, jax.device_count() if num_devices is None else num_devices)
    rl = c.rl
    if rl.sampler_devices and jax.process_count() > 1:
        raise ValueError(
            f"rl.sampler_devices={rl.sampler_devices}: a separate sampler mesh is single-process for now "
            f"({jax.process_count()} processes); use 0 (shared devices) with rl.max_staleness"
        )
    for f in tuple(c.data.train_files) + tuple(c.data.eval_files):
        if not os.path.exists(f):
            raise ValueError(f"data.train_files/eval_files: no such file {f!r}")
    if not c.model.checkpoint and not c.tokenizer.path:
        raise ValueError(
            "model.checkpoint='': GRPO starts from a base model; pass --config.model.checkpoint=PATH (a stage-0 "
            "export or a local Hugging Face checkpoint directory)"
        )
    if c.model.checkpoint and not os.path.isdir(c.model.checkpoint):
        raise ValueError(
            f"model.checkpoint={c.model.checkpoint!r}: no such directory; pass a local checkpoint with "
            "--config.model.checkpoint=PATH"
        )


def validate_shapes(c, num_devices: int) -> None:
    """The checks of `validate` that need neither files nor devices: values, and shapes against a mesh of
    `num_devices` devices (r1jax/compile.py runs these for a TPU topology from any host)."""
    rl, s = c.rl, c.sampling
    validate_rl(c)
    if s.temperature <= 0:
        raise ValueError(f"sampling.temperature={s.temperature}: must be > 0 for RL rollouts")
    if not 0 < s.top_p <= 1:
        raise ValueError(f"sampling.top_p={s.top_p}: must be in (0, 1]")
    if s.max_new_tokens < 1 or s.max_prompt_len < 1:
        raise ValueError(f"sampling.max_new_tokens={s.max_new_tokens}, max_prompt_len={s.max_prompt_len}: must be >= 1")
    if s.scheduler not in sampling.SCHEDULERS:
        raise ValueError(f"sampling.scheduler={s.scheduler!r}: expected one of {sampling.SCHEDULERS}")
    if s.num_slots < 0 or (s.num_slots and s.scheduler != "continuous"):
        raise ValueError(
            f"sampling.num_slots={s.num_slots}: must be >= 0, and 0 unless sampling.scheduler='continuous' "
            f"(it is {s.scheduler!r})"
        )
    if c.eval.num_prompts < 0:
        raise ValueError(f"eval.num_prompts={c.eval.num_prompts}: must be >= 0 (0: no evaluation)")
    if c.eval.num_samples < 1:
        raise ValueError(f"eval.num_samples={c.eval.num_samples}: must be >= 1")
    if c.eval.split not in provenance.SPLITS:
        raise ValueError(f"eval.split={c.eval.split!r}: expected one of {provenance.SPLITS}")
    if c.kernels.implementation not in ("auto", "xla", "chunked", "pallas"):
        raise ValueError(f"kernels.implementation={c.kernels.implementation!r}: expected auto | xla | chunked | pallas")
    train_state.validate_optimizer(c.optim)
    validate_checkpoint(c.checkpoint)
    if rl.max_staleness < 0:
        raise ValueError(f"rl.max_staleness={rl.max_staleness}: must be >= 0")
    if rl.sampler_dtype not in SAMPLER_DTYPES:
        raise ValueError(f"rl.sampler_dtype={rl.sampler_dtype!r}: expected one of {SAMPLER_DTYPES}")
    if not 0 <= rl.sampler_devices < num_devices:
        raise ValueError(
            f"rl.sampler_devices={rl.sampler_devices}: must be in [0, {num_devices}) (the trainer needs a device)"
        )
    if rl.sampler_devices:
        for name, n in (("rl.prompts_per_step", rl.prompts_per_step), ("sampling.num_slots", s.num_slots)):
            if n % rl.sampler_devices:
                raise ValueError(
                    f"{name}={n}: not divisible by the sampler's rl.sampler_devices={rl.sampler_devices}"
                )
    mesh_shape = sharding.resolve_mesh_shape(c.mesh.shape, num_devices - rl.sampler_devices)
    dp = mesh_shape[0] * mesh_shape[1]
    batch = rl.prompts_per_step * rl.group_size
    if rl.prompts_per_step % dp:
        raise ValueError(
            f"rl.prompts_per_step={rl.prompts_per_step}: not divisible by the data-parallel size {dp} "
            f"(mesh.shape={tuple(mesh_shape)})"
        )
    if batch % dp:
        raise ValueError(f"batch P·G={batch}: not divisible by the data-parallel size {dp}")
    if s.scheduler == "continuous" and min(s.num_slots or batch, batch) % dp:
        raise ValueError(f"sampling.num_slots={s.num_slots}: not divisible by the data-parallel size {dp}")
    validate_data(c)


def model_max_seq_len(mc) -> int | None:
    """The model's context length from its config alone (the checkpoint's config.json, or the preset), so that
    `check_context` fails before any weights are read or anything compiles; None when there is no config.json
    (loading then fails with its own message)."""
    if not mc.checkpoint:
        return get_preset(mc.preset).max_seq_len
    path = os.path.join(mc.checkpoint, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return config_from_hf(json.load(f)).max_seq_len


def check_context(c, max_seq_len: int) -> None:
    need = c.sampling.max_prompt_len + c.sampling.max_new_tokens
    if need > max_seq_len:
        raise ValueError(
            f"sampling.max_prompt_len + sampling.max_new_tokens = {need} exceeds the model's context "
            f"max_seq_len={max_seq_len}"
        )
