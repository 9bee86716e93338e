"""Fine-tune a pretrained video ViT and evaluate it: ``torchrun -m amd_fast.finetune``.

    python -m amd_fast.finetune --config configs/finetune-tiny-cpu.yaml model.pretrained=runs/demo/student/checkpoints/encoder.pth
    torchrun --nproc_per_node 8 -m amd_fast.finetune --config configs/finetune-vits-k400.yaml \\
        data.shards=shards/k400 model.pretrained=runs/amd-vits-k400/checkpoints/encoder.pth
    python -m amd_fast.finetune --config configs/finetune-vits-k400.yaml --eval    # the run's newest checkpoint

Overrides are ``section.key=value`` (sections: data, model, aug, eval, optim, train, checkpoint, log).
Training resumes from the newest checkpoint in ``<log.dir>/checkpoints`` (``checkpoint.resume=auto``) and
ends with the multi-view test; ``--eval`` runs only the test (the run's newest checkpoint, else
``model.pretrained``). Results: the log, ``<log.dir>/metrics.jsonl`` and ``<log.dir>/eval/test.json`` (+ the
confusion matrix as PNG). Exit codes: 0 ok, 1 the run failed, 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys

from amd_fast.errors import run_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m amd_fast.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/finetune-*.yaml)")
    p.add_argument("--eval", action="store_true", help="only evaluate (the multi-view test), no training")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_intermixed_args(argv)  # key=value overrides before or after the flags

    def finetune() -> int:
        from amd_fast.finetune.config import load_finetune_config

        cfg = load_finetune_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from amd_fast.finetune.trainer import run

        from amd_fast.errors import EXIT_INTERRUPTED

        result = run(cfg, eval_only=args.eval)
        if not args.eval and result.interrupted:
            return EXIT_INTERRUPTED  # saved, test skipped: `finetune && next` must not go on
        r = result if args.eval else getattr(result, "eval", None)
        if r is not None:
            print(f"test ({cfg.eval.split}): {r.summary()}")
        return 0

    return run_cli(finetune, "amd_fast.finetune")


if __name__ == "__main__":
    sys.exit(main())
