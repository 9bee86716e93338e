"""Pretrain an AMD student (or a VideoMAE model with ``model.teacher=null``).

    python -m amd_fast.train --config configs/tiny-cpu.yaml [section.key=value ...]
    torchrun --nproc_per_node 2 -m amd_fast.train --config configs/amd-vits-k400.yaml data.shards=shards/k400

Overrides are YAML values (``optim.lr=1e-3``, ``model.teacher=null``, ``model.student_align_layers=[6,12]``).
``--print-config`` shows the merged, validated config and exits. See :mod:`amd_fast.config` for the keys.
Exit codes (all amd_fast commands): 0 ok, 1 the run failed, 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

from amd_fast.errors import run_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m amd_fast.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/); defaults are used for what it leaves out")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_intermixed_args(argv)  # key=value overrides before or after the flags

    def train() -> int:
        from amd_fast.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from amd_fast.errors import EXIT_INTERRUPTED
        from amd_fast.trainer.loop import run

        result = run(cfg)
        return EXIT_INTERRUPTED if result.interrupted else 0  # `train && next` must not go on after a stop

    return run_cli(train, "amd_fast.train")


if __name__ == "__main__":
    sys.exit(main())
