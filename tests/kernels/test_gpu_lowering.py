"""The Pallas GPU kernels lower to Triton for CUDA at real Qwen2.5 head shapes, on this CPU host (no GPU).

`jax.export` with platforms=['cuda'] runs the Pallas→Triton lowering (the Triton IR is built and serialised into
the custom call), so a kernel that Triton's frontend rejects at these shapes fails here. It does not run Triton's
own compilation to PTX, which happens when XLA:GPU compiles the program on a machine with a GPU.
"""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from r1jax.kernels.grouped_logprob import api as logprob_api
from r1jax.kernels.kl import api as kl_api

TRITON = "__gpu$xla.gpu.triton"
N = 16384


def _loss(kernel):
    if kernel == "logprob":

        def loss(h, w, t):
            lp, ent = logprob_api.grouped_logprob_nd(
                h, w, t, temperature=1.0, return_entropy=True, implementation="pallas_gpu", interpret=False
            )
            return jnp.sum(lp) + jnp.sum(ent)

        return loss
    # interpret=False: the target is CUDA, not this host (an export names no mesh to resolve it from)
    return lambda h, w, t: jnp.sum(
        kl_api.kl_nd(h, w, h, w, temperature=1.0, implementation="pallas_gpu", interpret=False)
    )


@pytest.mark.parametrize("kernel", ["logprob", "kl"])
@pytest.mark.parametrize(
    "d, v, dtype", [(3584, 152064, jnp.bfloat16), (5120, 152064, jnp.float32)], ids=["7b-bf16", "32b-f32"]
)
def test_gpu_kernels_lower_to_triton_for_cuda(kernel, d, v, dtype):
    """Value and gradient: the forward, dh and dW kernels each become one Triton call in the CUDA program."""
    fn = jax.jit(jax.value_and_grad(_loss(kernel), argnums=(0, 1)))
    args = [jax.ShapeDtypeStruct(s, dt) for s, dt in (((N, d), dtype), ((d, v), dtype), ((N,), jnp.int32))]
    allow_triton = [export.DisabledSafetyCheck.custom_call(TRITON)]
    exported = export.export(fn, platforms=["cuda"], disabled_checks=allow_triton)(*args)
    assert exported.platforms == ("cuda",)
    assert exported.mlir_module().count(TRITON) == 3
