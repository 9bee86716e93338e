"""amd_fast: fast Asymmetric Masked Distillation pretraining for video ViTs.

The Triton kernels live in the top-level ``kernels/`` folder but install as the
sub-package ``amd_fast.kernels`` (``package_dir`` below), so they can never collide
with the unrelated ``kernels`` package on PyPI.
"""
from setuptools import setup

setup(
    name="amd_fast",
    version="0.1.0",
    description="Asymmetric Masked Distillation video pretraining: DALI loading, Triton kernels",
    python_requires=">=3.10",
    packages=[
        "amd_fast",
        "amd_fast.shard",
        "amd_fast.data",
        "amd_fast.models",
        "amd_fast.kernels",
    ],
    package_dir={"amd_fast.kernels": "kernels"},
    install_requires=[
        # The PyPI torch build (CUDA-enabled, also runs on CPU); the CPU-only wheel breaks torchvision.
        "torch>=2.5,<3",
        "torchvision>=0.20",
        "timm>=1.0,<2",
        "triton>=3.1",
        "nvidia-dali-cuda130>=1.50",
        "webdataset>=0.2.90,<2",
        "av>=13",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.16",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "bench": ["matplotlib>=3.8"],
    },
    entry_points={
        "console_scripts": [
            "amd-shard=amd_fast.shard.__main__:main",
            "amd-train=amd_fast.train:main",
        ],
    },
)
