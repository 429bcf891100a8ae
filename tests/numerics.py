"""Float tolerances argued from the computation, so that a check passes on any CPU the arithmetic is right on.

XLA:CPU compiles for the host: the instruction set, the CPU model LLVM tunes for, FMA contraction and the order of
float reductions all change which float32 roundings happen. Two correct float32 evaluations of one function then
agree only up to rounding whose size depends on the computation, not on a digit chosen on one machine. The tests
therefore bound a difference in one of two ways:

- **Against a float64 oracle.** `f64_model` gives a float64 copy of a model (the transformer computes in the
  activations' dtype where it is wider than f32), evaluated under `jax.enable_x64`. `assert_as_accurate` then
  checks that a float32 evaluation is no further from the float64 value than a reference float32 evaluation of the
  same quantity is, up to `FACTOR`, plus a floor of a few ulps of the values' scale. Both are float32 evaluations
  differing only in the order of their operations, so their rounding errors have the same size on any CPU; the
  reference's observed error measures that size on this one. A wrong index, a missing term or a wrong position is
  O(1) and fails.
- **From the reduction length.** `sum_atol(n, scale)`: two float32 sums of the same n terms in different orders
  differ by at most 2·γ_n·Σ|x_i| (Higham, Accuracy and Stability of Numerical Algorithms, eq. 4.4), γ_n = n·u /
  (1 − n·u), u = 2⁻²⁴ the unit roundoff; elementwise transcendental functions (exp, log) add a few ulps each.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.models import init_model

U32 = 2.0**-24  # float32 unit roundoff (half an ulp of 1)
FACTOR = 4.0  # how much less accurate than the reference evaluation a rearranged one may be
FLOOR_ULPS = 16  # a floor, in ulps of the values' scale, for entries where the reference happens to be exact


def gamma(n: int, u: float = U32) -> float:
    """Higham's γ_n = n·u / (1 − n·u): the relative error bound of an n-term float sum or dot product."""
    return n * u / (1.0 - n * u)


def sum_atol(n: int, scale: float, transcendental_ulps: int = 0) -> float:
    """Largest difference between two float32 evaluations of a sum of n terms whose absolute values add up to
    `scale`, in different orders (2·γ_n·scale), plus `transcendental_ulps` ulps of `scale` for elementwise exp/log
    whose implementations differ between libraries and instruction sets."""
    return 2.0 * gamma(n) * scale + transcendental_ulps * 2.0 * U32 * scale


def f64_model(model):
    """A float64 copy of an r1jax Transformer: same weights, activations and parameters in float64. Build and call
    it under `with jax.enable_x64(True):`."""
    cfg = dataclasses.replace(model.cfg, dtype="float64", param_dtype="float64")
    m = nnx.eval_shape(lambda: init_model(cfg, 0))
    wide = lambda x: jnp.asarray(np.asarray(x), jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
    state = jax.tree.map(wide, nnx.state(model))
    nnx.update(m, state)
    return m


def _errors(x, oracle):
    return np.abs(np.asarray(x, np.float64) - np.asarray(oracle, np.float64))


def bound(ref32, oracle64, *, factor: float = FACTOR, floor_ulps: int = FLOOR_ULPS) -> float:
    """factor · max|ref32 − oracle| + floor_ulps ulps of max|oracle|: how far from the oracle a float32 evaluation
    of the same quantity in another operation order may be. The reference's largest error (not its error at the
    same entry) sets the scale, because which entry rounds worst depends on the operation order; the floor covers
    arrays the reference happens to compute exactly."""
    oracle = np.asarray(oracle64, np.float64)
    scale = float(np.max(np.abs(oracle))) if oracle.size else 0.0
    return factor * float(np.max(_errors(ref32, oracle), initial=0.0)) + floor_ulps * 2.0 * U32 * scale


def assert_as_accurate(x32, ref32, oracle64, *, factor: float = FACTOR, floor_ulps: int = FLOOR_ULPS, err_msg=""):
    """Elementwise: |x32 − oracle| <= `bound(ref32, oracle64)`."""
    oracle = np.asarray(oracle64, np.float64)
    scale = float(np.max(np.abs(oracle))) if oracle.size else 0.0
    limit = bound(ref32, oracle, factor=factor, floor_ulps=floor_ulps)
    worst = float(np.max(_errors(x32, oracle), initial=0.0))
    assert worst <= limit, f"{err_msg} largest error {worst:.3e} > bound {limit:.3e} (scale {scale:.3e})"


def assert_trees_as_accurate(x32, ref32, oracle64, *, factor: float = FACTOR, floor_ulps: int = FLOOR_ULPS):
    """`assert_as_accurate` per leaf, in the leaf's norm relative to the oracle's (a gradient's entries differ by
    orders of magnitude; its norm is what an update moves by). The reference's relative error is taken as the
    largest over all leaves: every leaf comes out of the same backward pass, so one leaf's luck is not a scale."""
    def rel(a, o):
        o = np.asarray(o, np.float64)
        return float(np.linalg.norm(np.asarray(a, np.float64) - o) / max(np.linalg.norm(o), np.finfo(float).tiny))

    ref_err = max(jax.tree.leaves(jax.tree.map(rel, ref32, oracle64)))
    limit = factor * ref_err + floor_ulps * 2.0 * U32
    errs = jax.tree_util.tree_leaves_with_path(jax.tree.map(rel, x32, oracle64))
    bad = {jax.tree_util.keystr(k): f"{v:.3e}" for k, v in errs if v > limit}
    assert not bad, f"relative errors above {limit:.3e} (reference's largest {ref_err:.3e}): {bad}"
