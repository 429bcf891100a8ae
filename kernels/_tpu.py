"""Per-generation VMEM budgets and block sizes for the Mosaic (Pallas TPU) kernels.

Every kernel here streams (block_n, D) tiles of h and (D, block_v) tiles of W through VMEM (double-buffered by
the Pallas pipeline) and keeps at most one (block_n, D) or (D, block_v) f32 accumulator; nothing of size N × D
or D × V is ever resident. What a tile costs grows with D, so one fixed block size cannot fit every head on every
chip: at Qwen2.5-7B (D = 3,584, bf16) the (256, 512) dh kernel needs 17.5 MiB, over v4's and v5e's default
16 MiB scoped limit. So block sizes come from a rule: start from the kernel's preferred (block_n, block_v) and
halve the larger side until the kernel's VMEM footprint fits the chip's budget, and the scoped limit is raised
explicitly to that budget (`vmem_limit_bytes`).
"""

from jax.experimental.pallas import tpu as pltpu

MIB = 2**20

# VMEM per TensorCore as libtpu's compiler reports it (the size in its "would exceed memory" error when a
# kernel asks for more; libtpu 0.0.42.1, benchmarks/RESULTS.md), keyed by `device.device_kind`.
VMEM_BYTES = {
    "TPU v4": 16 * MIB,
    "TPU v5 lite": 128 * MIB,  # v5e
    "TPU v5": 64 * MIB,  # v5p
    "TPU v6 lite": 128 * MIB,  # v6e
}
# The scoped limit asked of Mosaic: half the VMEM on the large-VMEM chips (room for XLA's own fusions around the
# kernel), all of it on v4, where 16 MiB is all there is. Unknown chips get v4's conservative 16 MiB.
LIMIT_FRACTION = 0.5
MIN_LIMIT = 16 * MIB
# Mosaic's internal scratch and the (rows, cols) f32 temporaries of the tile math (z, p, dz, masks) are not in the
# footprint formulas below; this share of the limit is left for them.
HEADROOM = 0.7


def vmem_limit_bytes(device_kind: str | None) -> int:
    vmem = VMEM_BYTES.get(device_kind or "", MIN_LIMIT)
    return max(MIN_LIMIT, int(vmem * LIMIT_FRACTION)) if vmem > MIN_LIMIT else vmem


def fit_blocks(footprint, block_n: int, block_v: int, n: int, v: int, limit: int) -> tuple[int, int]:
    """The largest (block_n, block_v), halving from the preferred ones, with footprint(bn, bv) <= HEADROOM·limit.

    Blocks stay legal for Mosaic: block_n a multiple of 8 and block_v of 128, or the whole axis.
    """
    bn, bv = min(block_n, n), min(block_v, v)
    while footprint(bn, bv) > HEADROOM * limit:
        if bv >= 256 and (bv >= bn or bn < 16):
            bv //= 2
        elif bn >= 16:
            bn //= 2
        else:
            break  # the smallest legal tile; Mosaic's own error then names the allocation
    return bn, bv


def tile_temporaries(bn: int, bv: int) -> int:
    """Bytes of the (bn, bv) f32 values that the tile math keeps live at once (about six: z, e/p, dz, masks)."""
    return 6 * 4 * bn * bv


def compiler_params(interpret: bool, limit: int | None, semantics=("parallel", "arbitrary")):
    """Mosaic settings: the outer grid axis parallel, the reduced (last) axis sequential, the scoped VMEM limit."""
    if interpret:
        return None
    return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)
