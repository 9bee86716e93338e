"""Export a trained model for another library.

    python -m amd_fast.export --format hf --out hf/amd-vits-k400 runs/amd-vits-k400/checkpoints/encoder.pth
    python -m amd_fast.export --format hf --out hf/vits-k400-ft runs/ft-vits-k400/checkpoints/step-000012345.pt

``--format hf``: a Hugging Face ``transformers`` folder (``config.json``, ``model.safetensors``, ``README.md``
model card) that ``VideoMAEModel`` (pretraining student, encoder file) or ``VideoMAEForVideoClassification``
(fine-tuned classifier, ``id2label`` from the shards' class names) loads with ``from_pretrained``; push it with
``huggingface-cli upload <repo> <folder>``. Needs ``pip install amd_fast[hf]``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from amd_fast.errors import run_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m amd_fast.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a checkpoint (step-*.pt, pretraining or fine-tuning), encoder.pth or "
                                  "encoder.safetensors")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers VideoMAE folder (default)")
    p.add_argument("--out", required=True, help="the folder to write (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds files")
    p.add_argument("--encoder-only", action="store_true",
                   help="a classifier's encoder alone, as VideoMAEModel (also for model.pool=tokens classifiers)")
    p.add_argument("--arch", help="encoder files only, when not recorded: the arch (e.g. vit_small)")
    p.add_argument("--input-size", type=int, help="encoder files only, when not recorded: clip side in pixels")
    p.add_argument("--num-frames", type=int, help="encoder files only, when not recorded: frames per clip")
    args = p.parse_args(argv)

    def export() -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        from amd_fast.models import hf_videomae

        hf_videomae.require("transformers").utils.logging.disable_progress_bar()  # missing: one line naming the extra
        from amd_fast.export import class_names_for, to_transformers
        from amd_fast.export.card import model_card
        from amd_fast.export.sources import load_source

        src = load_source(args.source, arch=args.arch, input_size=args.input_size, num_frames=args.num_frames)
        classifier = src.kind == "finetune" and not args.encoder_only
        classes = class_names_for(src) if classifier else None
        hf_class = "VideoMAEForVideoClassification" if classifier else "VideoMAEModel"
        out = to_transformers(src.model, args.out, classes=classes, card=model_card(src, hf_class, classes),
                              encoder_only=args.encoder_only, overwrite=args.overwrite)
        print(f"wrote {out}: load it with transformers.{hf_class}.from_pretrained({str(out)!r})")
        return 0

    return run_cli(export, "amd_fast.export")


if __name__ == "__main__":
    sys.exit(main())
