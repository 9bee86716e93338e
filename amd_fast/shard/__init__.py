"""Video dataset -> WebDataset tar shards + DALI indexes + manifests (see shards/FORMAT.md).

CLI: ``python -m amd_fast.shard --help``. API::

    from amd_fast.shard import ShardOptions, build_shards, read_manifest
    manifests = build_shards(ShardOptions(src="synthetic", out="shards/synthetic"))
    m = read_manifest(manifests["train"])
"""
from .build import build_shards, build_shards_report
from .manifest import read_manifest
from .options import ShardOptions
from .verify import verify_shards

__all__ = ["ShardOptions", "build_shards", "build_shards_report", "read_manifest", "verify_shards"]
