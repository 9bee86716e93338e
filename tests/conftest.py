"""Test-wide set-up.

TRITON_INTERPRET must be set before ``triton`` is first imported, so the Triton
kernels run (slowly, for correctness) on a CPU-only machine. On a CUDA machine the
variable is left alone unless already set, so GPU-marked tests run compiled code.
"""
import os

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (compiled Triton, DALI mixed decode); skipped without it")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

# Shared fixtures live next to the code that owns them.
pytest_plugins = ["tests.shard_fixtures", "tests.s3_endpoint"]
