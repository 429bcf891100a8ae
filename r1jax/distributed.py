"""Multi-host runs: starting `jax.distributed`, and moving batches between one process's host memory and the mesh.

Start-up (`r1jax` calls `initialize` before anything touches a device):

    TPU VM slice       nothing to set: libtpu is present, so `jax.distributed.initialize()` auto-detects the slice
    GPU / CPU cluster  R1JAX_COORDINATOR=host0:1234 R1JAX_NUM_PROCESSES=2 R1JAX_PROCESS_ID=0..1 on each process
                       (or the flags --coordinator / --num-processes / --process-id, which win over the environment)
    SLURM / Open MPI   R1JAX_DISTRIBUTED=cluster (jax reads the scheduler's variables)
    one process        R1JAX_DISTRIBUTED=off, or simply nothing set off a TPU VM

CPU processes exchange collectives through gloo over TCP (`jax_cpu_collectives_implementation`), which is how the
tests run 2 processes × 4 fake devices on one machine.

Data (see r1jax/trainers/grpo.py): every process draws the same global batch of P prompts from one iterator and
keeps the rows its devices hold (`local_batch_slice`), so a run's data, sampling keys and losses do not depend on
how many processes share the mesh, and a checkpoint's iterator state means the same thing on any topology. Each
process samples, decodes and scores its own rows; `host_to_global` assembles the training batch from the
per-process rows (`jax.make_array_from_process_local_data`), and `global_to_host` hands each process its rows of
a sharded result back. Rewards (P × G floats) are gathered to every process (`gather_rows`) so that advantages
and logged metrics are global.

Preemption: with `jax.distributed` running, its SIGTERM notifier feeds orbax's preemption sync point
(`CheckpointManager.reached_preemption(step)`), which turns true on every process at the same step; a Python
SIGTERM handler would replace that notifier, so `preemption_guard` installs one only in a single process. Every
trainer checks both after each step through r1jax/trainers/loop.py, the one preemption path.

SFT, distillation and the reward model draw the whole global batch on every process from one seeded iterator;
`global_batch` places each process's rows of it.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

ENV_COORDINATOR = "R1JAX_COORDINATOR"
ENV_NUM_PROCESSES = "R1JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "R1JAX_PROCESS_ID"
ENV_MODE = "R1JAX_DISTRIBUTED"
MODES = ("auto", "off", "cluster")
BATCH_AXES = ("data", "fsdp")  # r1jax.sharding.BATCH_AXES; repeated to keep this module free of model imports


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """How this process joins a run: 'off' (alone), 'explicit' (address, count, id given) or 'cluster'
    (jax auto-detects a TPU VM slice, SLURM, Open MPI or Kubernetes)."""

    mode: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _int_field(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def on_tpu_vm() -> bool:
    """A Cloud TPU VM: TPU devices present, libtpu installed, and jax not forced onto another platform."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    has_chips = bool(glob.glob("/dev/accel*")) or os.path.isdir("/dev/vfio")
    return has_chips and importlib.util.find_spec("libtpu") is not None and (not platforms or "tpu" in platforms)


def resolve_spec(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    mode: str | None = None,
    environ=None,
) -> LaunchSpec:
    """The LaunchSpec from flags, then the R1JAX_* environment; raises naming the missing or bad setting."""
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_field(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _int_field(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    mode = mode or env.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={mode!r}: expected one of {MODES}")
    given = {
        f"--coordinator/{ENV_COORDINATOR}": coordinator,
        f"--num-processes/{ENV_NUM_PROCESSES}": num_processes,
        f"--process-id/{ENV_PROCESS_ID}": process_id,
    }
    if any(v is not None for v in given.values()):
        if mode == "off":
            raise ValueError(f"{ENV_MODE}=off, but {', '.join(k for k, v in given.items() if v is not None)} set")
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"multi-process launch: {', '.join(missing)} not set (all three are needed)")
        if num_processes < 1:
            raise ValueError(f"{ENV_NUM_PROCESSES}={num_processes}: must be >= 1")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"{ENV_PROCESS_ID}={process_id}: must be in [0, {ENV_NUM_PROCESSES}={num_processes})")
        if ":" not in coordinator:
            raise ValueError(f"{ENV_COORDINATOR}={coordinator!r}: expected host:port")
        return LaunchSpec("explicit", coordinator, num_processes, process_id)
    if mode == "auto":
        mode = "cluster" if on_tpu_vm() else "off"
    return LaunchSpec(mode)


def initialize(spec: LaunchSpec) -> bool:
    """Start `jax.distributed` as `spec` says (before any device is touched); True when it was started here."""
    if spec.mode == "off" or jax.distributed.is_initialized():
        return False
    # CPU processes need a cross-process collectives backend; gloo (TCP) is jax's default but say it explicitly,
    # since older jax versions defaulted to none and multi-process CPU computations then fail at the first psum.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec.mode == "explicit":
        jax.distributed.initialize(
            coordinator_address=spec.coordinator, num_processes=spec.num_processes, process_id=spec.process_id
        )
    else:
        jax.distributed.initialize()
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True


# ---------------------------------------------------------------------------------------------------------------
# Per-process rows of batch-sharded arrays


def local_batch_slice(mesh, global_rows: int) -> slice:
    """Rows [start, stop) of an array whose leading axis (length `global_rows`) is split over ('data', 'fsdp'),
    that this process's devices hold. Processes that share a data shard (e.g. tensor parallelism across hosts)
    get the same rows."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    dp = int(np.prod([mesh.shape[a] for a in axes]))
    if global_rows % dp:
        raise ValueError(f"batch of {global_rows} rows is not divisible by the data-parallel size {dp}")
    spans = set()
    for index in NamedSharding(mesh, P(axes)).addressable_devices_indices_map((global_rows,)).values():
        start, stop, _ = index[0].indices(global_rows)
        spans.add((start, stop))
    spans = sorted(spans)
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(
            f"process {jax.process_index()} holds the non-contiguous rows {spans} of the batch; order the mesh's "
            "devices by process (r1jax.sharding.make_mesh does)"
        )
    return slice(start, stop)


def local_data_shards(mesh) -> int:
    """How many distinct batch shards (over ('data', 'fsdp')) this process's devices hold; alone, all of them."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    dp = int(np.prod([mesh.shape[a] for a in axes]))
    if jax.process_count() == 1:
        return dp
    indices = NamedSharding(mesh, P(axes)).addressable_devices_indices_map((dp,)).values()
    return len({index[0].indices(dp)[:2] for index in indices})


def host_to_global(tree, shardings):
    """Global arrays from this process's rows (numpy or jax arrays); `shardings` is a matching tree. Alone, the
    rows are the whole batch and this is `jax.device_put`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed PRNG keys
            data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(x)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(one, tree, shardings)


def global_batch(tree, shardings):
    """Global arrays from a batch that every process holds whole (numpy), as the SFT and reward-model data
    iterators produce it: each process places the rows its devices hold. Alone, this is `jax.device_put`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):  # one sharding for every leaf, as jax.device_put allows
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def global_to_host(tree):
    """Numpy copies of this process's rows of each array: the whole array when it is fully addressable or
    replicated, else the addressable shards concatenated along the (only) sharded leading axis."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        pieces = {}
        for shard in x.addressable_shards:
            span = tuple(sl.indices(n)[:2] for sl, n in zip(shard.index, x.shape))
            if any(s != (0, n) for s, n in zip(span[1:], x.shape[1:])):
                raise ValueError(f"global_to_host: array of shape {x.shape} is sharded beyond its leading axis")
            pieces.setdefault(span[0], shard.data)
        spans = sorted(pieces)
        return np.concatenate([np.asarray(pieces[s]) for s in spans], axis=0)

    return jax.tree.map(one, tree)


def gather_rows(tree, mesh):
    """Every process's rows (leading axis split over ('data', 'fsdp')), in global order, as numpy on every
    process. For small host arrays (rewards, lengths); alone it returns the rows as they are."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, P(axes, *[None] * (np.ndim(x) - 1))), tree)
    global_tree = host_to_global(tree, shardings)
    replicated = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(global_tree)
    return jax.tree.map(np.asarray, replicated)


def fetch(tree):
    """A full host copy of a tree of (possibly sharded across processes) arrays, on every process; one leaf is
    replicated at a time, so the peak extra device memory is that of the largest leaf (for exporting weights)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        rep = NamedSharding(x.sharding.mesh, P())
        return np.asarray(jax.jit(lambda a: a, out_shardings=rep)(x))

    return jax.tree.map(one, tree)


def all_processes(flag: bool) -> bool:
    """True when `flag` is true on every process (a decision every process must take the same way)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def process_max(value: int) -> int:
    """The largest `value` over processes (e.g. a padded width every process must share)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(int(value), np.int64))))


# ---------------------------------------------------------------------------------------------------------------
# Preemption


class _SyncPointOnly:
    """Stands in for checkpoint.PreemptionGuard when orbax's sync point sees SIGTERM through jax.distributed."""

    triggered = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def preemption_guard():
    """The SIGTERM guard for a training loop: a Python handler (r1jax.checkpoint.PreemptionGuard) in a single
    process; nothing extra once `jax.distributed` runs, whose own SIGTERM notifier makes
    `Checkpointer.reached_preemption(step)` true on all processes at the same step (a Python handler would
    replace that notifier, and only the signalled process would stop)."""
    from r1jax import checkpoint as ckpt_lib

    return _SyncPointOnly() if jax.distributed.is_initialized() else ckpt_lib.PreemptionGuard()
