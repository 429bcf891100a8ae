"""One full GRPO iteration, r1jax's trainer versus TRL's GRPOTrainer, side by side on the same CPU.

Both trainers run as shipped (r1jax: `r1jax.trainers.grpo.train`; TRL: `trl.GRPOTrainer.train`, transformers'
`generate`, no vLLM) on the same things:

  model      one randomly initialised small Qwen2 (default D=256, L=4, H=4, K=2, F=768; ~3.4M parameters with a
             ~100-symbol character vocabulary), written once by r1jax as a Hugging Face checkpoint that both load
  tokenizer  the same `tokenizer.json` (characters); its EOS id lies outside the model's vocabulary, so no
             completion stops early and both generate exactly `--completion_len` tokens per row
  prompts    the same built-in arithmetic questions, as plain text (no template), P per step
  settings   G completions per prompt, temperature 1, top-p 1, DAPO token-level loss, ε_low 0.2 / ε_high 0.28,
             β (k3 KL to the initial weights; β > 0 means a reference forward per step), one update per batch
             (μ = 1), AdamW (lr 1e-5, β2 0.99, constant schedule, no weight decay), global-norm clip 1.0, f32,
             one process; TRL without gradient checkpointing (`--trl-checkpointing 1` turns it on), r1jax
             without block recomputation at the toy shape and with it (`model.remat`) at qwen2.5-0.5b
             (`--remat 0/1` overrides). At qwen2.5-0.5b r1jax also runs each prompt once for its G samples in the
             update and the reference pass (`rl.shared_prompt_forward`, as the real-model presets of
             experiments/r1_zero.py do; `--shared-prompt 0/1` overrides), and P = 2 prompts (16 rows) is the
             default: without the shared prompt forward r1jax's step needs 26.4 GiB at 16 rows with remat
             (benchmarks/measure/grpo_memory.py), more than a 24 GB machine has, with it 14.6 GiB (both with
             XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false, which the runs in RESULTS.md set)
  reward     the target-language share of each completion (r1jax: its 'language' reward; TRL: the same formula
             as a Python function)

An iteration is generation + rewards + advantages + (reference log-probs) + loss + backward + update. Timing:
each trainer stamps the end of every step (r1jax: when it logs the step's metrics, after they are fetched from the
device; TRL: `TrainerCallback.on_step_end`), and an iteration's time is the gap between consecutive stamps, so
both include everything their loop does. The first `--warmup` steps (r1jax's compilation, torch's first calls)
are excluded. r1jax and TRL runs alternate `--repeats` times (the machine is shared); medians are reported.
TRL runs in its own environment: `--trl-python PATH` (default $R1JAX_TORCH_PYTHON, else
.venv-torch/bin/python), or `--make-venv DIR` to create one from PyPI (torch CPU, transformers, trl, datasets).

    python -m benchmarks.measure.vs_trl --json /tmp/vs_trl.json
    python -m benchmarks.measure.vs_trl --steps 3 --warmup 1 --repeats 1      # quick
    python -m benchmarks.measure.vs_trl --shape qwen2.5-0.5b --json /tmp/vs_trl_05b.json  # ~25 min on 2 cores

`--shape qwen2.5-0.5b` uses the Qwen2.5-0.5B configuration (random weights, V = 151,936 padded into the character
tokenizer with filler tokens, tied embeddings) with `--prompt_len` (default 256) characters per prompt. Both sides
are pinned to `--threads` CPUs and the load average is recorded (benchmarks/harness.py); each side's peak resident
memory is its own process's peak RSS (VmHWM; each side runs in a process of its own, the checkpoint is built in a
third, so neither holds memory while the other runs), and r1jax's compile time is the sum of JAX's trace, lowering
and backend-compile events during its first run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

TRL_WORKER = r"""
import json, sys, time
import torch, datasets, transformers, trl

a = json.load(open(sys.argv[1]))
torch.manual_seed(0)
torch.set_num_threads(a["threads"])
tok = transformers.PreTrainedTokenizerFast(
    tokenizer_file=a["model"] + "/tokenizer.json", pad_token="<pad>", eos_token="<eos>"
)
model = transformers.AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
ds = datasets.Dataset.from_list([{"prompt": q} for q in a["prompts"]])
LETTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def language(completions, **kwargs):  # the share of Latin letters among letters, like r1jax's 'language' reward
    out = []
    for c in completions:
        letters = [ch for ch in c if ch.isalpha()]
        out.append(sum(ch in LETTERS for ch in letters) / len(letters) if letters else 1.0)
    return out


stamps = []


class Stamp(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        stamps.append(time.perf_counter())


cfg = trl.GRPOConfig(
    output_dir=a["out"], per_device_train_batch_size=a["P"] * a["G"], num_generations=a["G"],
    max_completion_length=a["T"], temperature=1.0, top_p=1.0, beta=a["beta"], loss_type="dapo", epsilon=0.2,
    epsilon_high=0.28, num_iterations=1, learning_rate=1e-5, lr_scheduler_type="constant", adam_beta2=0.99,
    weight_decay=0.0, max_grad_norm=1.0, max_steps=a["steps"], logging_steps=1, save_strategy="no",
    report_to="none", use_cpu=True, bf16=False, seed=0, gradient_checkpointing=a["checkpointing"], disable_dropout=True,
    dataloader_num_workers=0, scale_rewards="group",
)
trainer = trl.GRPOTrainer(model=model, reward_funcs=language, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Stamp()])
t0 = time.perf_counter()
trainer.train()
lengths = [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]
json.dump({"stamps": stamps, "start": t0, "lengths": lengths, "threads": torch.get_num_threads(),
           "peak_rss_mib": [int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM")][0],
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}},
          open(a["result"], "w"))
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=None, help="P prompts per step (toy 4, qwen2.5-0.5b 2)")
    p.add_argument("--group", type=int, default=8, help="G completions per prompt")
    p.add_argument("--completion_len", type=int, default=None, help="tokens per completion (toy 64, qwen2.5-0.5b 128)")
    p.add_argument("--beta", type=float, default=0.04, help="β (0: no reference forward)")
    p.add_argument("--shape", default="toy", choices=("toy", "qwen2.5-0.5b"), help="model shape (see above)")
    p.add_argument("--prompt_len", type=int, default=None, help="characters per prompt (qwen2.5-0.5b: 256)")
    p.add_argument("--embed_dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="timed iterations per run (toy 6, qwen2.5-0.5b 2)")
    p.add_argument("--warmup", type=int, default=None, help="iterations excluded (toy 2, qwen2.5-0.5b 1)")
    p.add_argument("--repeats", type=int, default=None, help="alternating r1jax / TRL runs (toy 2, qwen2.5-0.5b 1)")
    p.add_argument(
        "--remat",
        type=int,
        default=None,
        help="r1jax recomputes each block in the backward pass (toy 0, qwen2.5-0.5b 1)",
    )
    p.add_argument(
        "--shared-prompt",
        type=int,
        default=None,
        help="r1jax's rl.shared_prompt_forward: each prompt run once for its G samples (toy 0, qwen2.5-0.5b 1)",
    )
    p.add_argument("--trl-checkpointing", type=int, default=0, help="TRL's gradient_checkpointing (default 0)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPUs both sides are pinned to")
    p.add_argument("--trl-python", default=os.environ.get("R1JAX_TORCH_PYTHON", ".venv-torch/bin/python"))
    p.add_argument("--make-venv", default=None, help="create a venv with torch (CPU), transformers, trl here first")
    p.add_argument("--json", default=None, help="write the figures here; the headline TRL / r1jax time is `ratio`")
    p.add_argument("--_worker", default="", help=argparse.SUPPRESS)  # set by in_subprocess
    p.add_argument("--_tmp", default="", help=argparse.SUPPRESS)
    p.add_argument("--_out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    big = args.shape == "qwen2.5-0.5b"
    defaults = (
        ("remat", 0, 1),
        ("shared_prompt", 0, 1),
        ("prompts", 4, 2),
        ("completion_len", 64, 128),
        ("steps", 6, 2),
        ("warmup", 2, 1),
        ("repeats", 2, 1),
    )
    for name, toy, qwen in (*defaults, ("prompt_len", None, 256)):
        if getattr(args, name) is None:
            setattr(args, name, qwen if big else toy)
    return args


def make_venv(path: str) -> str:
    """A fresh venv with TRL from PyPI (torch from its CPU index); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    py = os.path.join(path, "bin", "python")
    pip = [py, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch", "--index-url", "https://download.pytorch.org/whl/cpu"], check=True)
    subprocess.run([*pip, "transformers", "trl", "datasets"], check=True)
    return py


def build_shared(tmp: str, args) -> tuple[str, list[str], str, int]:
    """(model dir, prompts, train JSONL, parameter count): a random Qwen2 + character tokenizer both load."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from r1jax.data import tasks
    from r1jax.models import ModelConfig, get_preset, init_model, save_hf_checkpoint

    records = [e.to_dict() for e in tasks.get_task("arithmetic").generate(256, seed=1, difficulty=1)]
    if args.prompt_len:  # every prompt exactly prompt_len characters (= tokens): the question repeated
        for r in records:
            r["question"] = ((r["question"] + " ") * (args.prompt_len // len(r["question"]) + 1))[: args.prompt_len]
    chars = sorted({ch for r in records for ch in r["question"]} | set("abcdefghijklmnopqrstuvwxyz0123456789 .,<>/="))
    vocab = {"<pad>": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    if args.shape == "qwen2.5-0.5b":  # the real vocabulary size: filler tokens after the characters
        vocab.update({f"<t{i}>": i for i in range(len(vocab), 151_936)})
    model_vocab = len(vocab)
    vocab["<eos>"] = model_vocab  # outside the model's vocabulary: never generated, so every row runs to length T
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.add_special_tokens(["<pad>", "<eos>"])
    mdir = os.path.join(tmp, "model")
    d = args.embed_dim
    if args.shape == "qwen2.5-0.5b":
        cfg = get_preset("qwen2.5-0.5b", vocab_size=model_vocab, max_seq_len=1024)
    else:
        cfg = ModelConfig(
            vocab_size=model_vocab,
            embed_dim=d,
            mlp_dim=3 * d,
            num_layers=args.layers,
            num_heads=4,
            num_kv_heads=2,
            head_dim=d // 4,
            qkv_bias=True,
            tie_embeddings=True,
            max_seq_len=1024,
            rope_theta=10_000.0,
        )
    save_hf_checkpoint(init_model(cfg, seed=0), mdir)
    tok.save(os.path.join(mdir, "tokenizer.json"))
    with open(os.path.join(mdir, "tokenizer_config.json"), "w") as f:
        json.dump({"pad_token": "<pad>", "eos_token": "<eos>"}, f)
    train = os.path.join(tmp, "train.jsonl")
    with open(train, "w") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "question": r["question"], "answer": r["answer"]}) + "\n")
    return mdir, [r["question"] for r in records], train, cfg.num_params()


def r1jax_config(args, mdir: str, train: str):
    from r1jax.trainers import grpo

    c = grpo.grpo_config()
    c.model.checkpoint = mdir
    c.model.remat = bool(args.remat)
    c.template = "plain"
    c.data.task = "arithmetic"  # scores answers; the reward here is language only
    c.data.train_files = (train,)
    c.rl.group_size, c.rl.prompts_per_step = args.group, args.prompts
    c.rl.num_steps = args.warmup + args.steps
    c.rl.mu, c.rl.beta = 1, args.beta
    c.rl.shared_prompt_forward = bool(args.shared_prompt)
    c.rl.loss_type, c.rl.epsilon_low, c.rl.epsilon_high, c.rl.scale_rewards = "dapo", 0.2, 0.28, "group"
    c.sampling.temperature, c.sampling.top_p = 1.0, 1.0
    c.sampling.max_new_tokens, c.sampling.max_prompt_len = args.completion_len, max(128, args.prompt_len or 0)
    c.rewards.weights = {"language": 1.0}
    c.optim.learning_rate, c.optim.decay, c.optim.b2 = 1e-5, "constant", 0.99
    c.optim.weight_decay, c.optim.grad_clip = 0.0, 1.0
    c.eval.num_prompts = 0  # timing only: no held-out evaluation
    c.checkpoint.every, c.checkpoint.async_save = 10**6, False
    c.export = False
    c.lock()
    return c


def run_r1jax(args, mdir, train, workdir) -> dict:
    import jax

    from r1jax import metrics as metrics_lib
    from r1jax.trainers import grpo

    compile_events = []  # JAX's trace, lowering and backend-compile durations

    def on_event(name, secs, **_):
        if name.startswith("/jax/core/compile/") and name.endswith("_duration"):
            compile_events.append(secs)

    jax.monitoring.register_event_duration_secs_listener(on_event)

    stamps, lengths, phases = [], [], []
    original = metrics_lib.MetricsWriter.write

    def stamped(self, step, m):  # the step's metrics were fetched from the device: the iteration is done
        stamps.append(time.perf_counter())
        lengths.append(float(m.get("rl/completion_length_mean", float("nan"))))
        # the trainer's own split of the step: sampling, rewards, batch + reference log-probs, the update
        keys = [k for k in ("sample", "reward", "logps", "train") if f"perf/{k}_time_s" in m]
        phases.append({k: float(m[f"perf/{k}_time_s"]) for k in keys})
        return original(self, step, m)

    metrics_lib.MetricsWriter.write = stamped
    try:
        grpo.train(r1jax_config(args, mdir, train), workdir)
    finally:
        metrics_lib.MetricsWriter.write = original
    stamps = stamps[: args.warmup + args.steps]  # the last write is the final evaluation's
    return {
        "iter_s": [b - a for a, b in zip(stamps[args.warmup - 1 :], stamps[args.warmup :])],
        "lengths": lengths,
        "phases_s": phases[args.warmup : args.warmup + args.steps],
        "compile_s": sum(compile_events),
        "peak_rss_mib": harness.peak_rss_mib(),
        "jax": jax.__version__,
        "jax_devices": str(jax.devices()),
    }


def in_subprocess(args, role: str, tmp: str, k: int = 0) -> dict:
    """Runs this script's `role` ('build' or 'r1jax') in a fresh process, so that each side's peak memory is its
    own and nothing one side holds is still resident while the other runs."""
    out = os.path.join(tmp, f"{role}{k}.json")
    argv, skip = [], False
    for a in sys.argv[1:]:  # the worker writes `out`, not the figures: no --json
        if not skip and not a.startswith("--json"):
            argv.append(a)
        skip = a == "--json"
    cmd = [sys.executable, "-m", __spec__.name, *argv, f"--_worker={role}", f"--_tmp={tmp}", f"--_out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{role} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def worker(args):
    """The body of `in_subprocess`: build the shared checkpoint, or run r1jax once."""
    if args._worker == "build":
        mdir, prompts, train, n_params = build_shared(args._tmp, args)
        result = {"mdir": mdir, "prompts": prompts, "train": train, "n_params": n_params}
    else:
        shared = json.load(open(os.path.join(args._tmp, "build0.json")))
        result = run_r1jax(args, shared["mdir"], shared["train"], os.path.join(args._tmp, f"r1jax_{time.time_ns()}"))
    with open(args._out, "w") as f:
        json.dump(result, f)


def run_trl(args, python, mdir, prompts, tmp, k) -> dict:
    spec = {
        "model": mdir,
        "prompts": prompts,
        "P": args.prompts,
        "G": args.group,
        "T": args.completion_len,
        "beta": args.beta,
        "steps": args.warmup + args.steps,
        "threads": args.threads,
        "checkpointing": bool(args.trl_checkpointing),
        "out": os.path.join(tmp, f"trl{k}"),
        "result": os.path.join(tmp, f"trl{k}.json"),
    }
    spec_path = os.path.join(tmp, f"trl{k}_spec.json")
    worker = os.path.join(tmp, "trl_worker.py")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    with open(worker, "w") as f:
        f.write(TRL_WORKER)
    env = dict(harness.torch_env(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([python, worker, spec_path], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"TRL worker failed:\n{proc.stderr[-4000:]}")
    out = json.load(open(spec["result"]))
    s = out["stamps"]
    return {"iter_s": [b - a for a, b in zip(s[args.warmup - 1 :], s[args.warmup :])], **out}


def main():
    args = parse_args()
    if args.warmup < 1:
        raise SystemExit("--warmup must be >= 1 (the first iteration compiles)")
    threads = harness.pin_threads(args.threads)  # before jax starts: XLA sizes its pool from the allowed CPUs
    if args._worker:
        return worker(args)
    python = make_venv(args.make_venv) if args.make_venv else args.trl_python
    load = harness.LoadMonitor(own_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shared = in_subprocess(args, "build", tmp)
        mdir, prompts, n_params = shared["mdir"], shared["prompts"], shared["n_params"]
        r1, trl_runs = [], []
        for k in range(args.repeats):  # alternate, so that load on the shared machine hits both alike
            r1.append(in_subprocess(args, "r1jax", tmp, k))
            trl_runs.append(run_trl(args, python, mdir, prompts, tmp, k))
            print(
                f"repeat {k}: r1jax {statistics.median(r1[-1]['iter_s']):.3f} s/iter, "
                f"TRL {statistics.median(trl_runs[-1]['iter_s']):.3f} s/iter",
                flush=True,
            )
    compile_s = r1[0]["compile_s"]  # each run compiles anew in its own process; the first is reported
    r1_iters = [t for r in r1 for t in r["iter_s"]]
    trl_iters = [t for r in trl_runs for t in r["iter_s"]]
    med_r1, med_trl = statistics.median(r1_iters), statistics.median(trl_iters)
    load_record = load.record()
    r1_peak = max(r["peak_rss_mib"] for r in r1)  # each r1jax run's own process
    trl_peak = max(r["peak_rss_mib"] for r in trl_runs)
    figures = {
        "ratio": med_trl / med_r1,
        "memory_ratio": r1_peak / trl_peak,
        "compile_s": compile_s,
        "load_avg": load_record,
        "loaded": load_record["loaded"],
        "threads": {"r1jax": threads, "trl_torch_threads": trl_runs[0]["threads"]},
        "r1jax_peak_rss_mib": r1_peak,
        "trl_peak_rss_mib": trl_peak,
        "r1jax_iter_s_spread": harness.spread(r1_iters),
        "trl_iter_s_spread": harness.spread(trl_iters),
        "r1jax_iter_s_median": med_r1,
        "trl_iter_s_median": med_trl,
        "r1jax_iter_s": r1_iters,
        "trl_iter_s": trl_iters,
        "r1jax_phases_s": [p for r in r1 for p in r["phases_s"]],
        "r1jax_completion_len": sorted(set(x for r in r1 for x in r["lengths"][: args.warmup + args.steps])),
        "trl_completion_len": sorted(set(x for r in trl_runs for x in r["lengths"])),
        "settings": {
            "shape": args.shape,
            "P": args.prompts,
            "G": args.group,
            "T": args.completion_len,
            "prompt_len": args.prompt_len,
            "beta": args.beta,
            "r1jax_remat": bool(args.remat),
            "r1jax_shared_prompt_forward": bool(args.shared_prompt),
            "trl_gradient_checkpointing": bool(args.trl_checkpointing),
            "embed_dim": args.embed_dim if args.shape == "toy" else None,
            "layers": args.layers if args.shape == "toy" else None,
            "params": n_params,
            "timed_steps": args.steps,
            "warmup_steps_excluded": args.warmup,
            "repeats": args.repeats,
            "torch_threads": trl_runs[0]["threads"],
            "jax": r1[0]["jax"],
            "jax_devices": r1[0]["jax_devices"],
            "cpus": os.cpu_count(),
            "load_avg_1min": os.getloadavg()[0],
            **trl_runs[0]["versions"],
        },
    }
    print(
        f"GRPO iteration, P={args.prompts} G={args.group} T={args.completion_len} β={args.beta}, "
        f"{n_params / 1e6:.1f}M params, medians of {len(r1_iters)} / {len(trl_iters)} steady-state iterations:"
    )
    rows = {"r1jax": figures["r1jax_iter_s_spread"], "TRL": figures["trl_iter_s_spread"]}
    print(harness.table(rows, "s per iteration", load_record))
    print(f"  TRL / r1jax = {figures['ratio']:.2f}×   r1jax compile {compile_s:.1f} s   both on {args.threads} CPUs")
    print(f"  peak RSS: r1jax {r1_peak:,.0f} MiB, TRL {trl_peak:,.0f} MiB, r1jax / TRL = {figures['memory_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
