"""The CPU demo: the AMD paper's claim in miniature, end to end on embedded synthetic data.

    python -m amd_fast.demo [--out runs/demo] [--teacher-steps N] [--student-steps N] [--finetune-steps N]

1. Builds synthetic VP9 shards (moving shapes; the class is the direction) with ``amd_fast.shard``,
   reusing them when they are already there.
2. Pretrains a tiny VideoMAE teacher (``model.teacher=null``, ``vit_mini_cpu``).
3. Pretrains two tiny students of the same size (``vit_tiny_cpu``) with the same budget (steps, batch,
   masks, targets): one distilled from the frozen teacher (AMD), one as plain VideoMAE.
4. Fine-tunes each student, and a randomly initialised one, with ``configs/finetune-tiny-cpu.yaml`` and the
   demo's fine-tuning settings (below), and tests them on the val split (2 x 3 views).
5. Linear-probes the three frozen encoders, and prints one table: fine-tuned top-1 and probe accuracy.

Demo-only settings (``DEMO_OVERRIDES``, applied before your own overrides), and why. The paper's
recipe (mask 0.9 / 0.75, per-patch normalized targets) is made for 224² natural video. On 64²
synthetic clips of one small flat-coloured shape it teaches a tiny model nothing in minutes:
90% tube masking hides the shape from the student in most clips, and per-patch normalization turns
the flat background patches into pure noise targets (the pixel loss stays at ~0.97). So the demo
masks 50% / 25% and regresses plain pixels. The probe reads every token's features
(``pool='tokens'``): the class is a direction of motion, and a mean over tokens throws away where
and when the shape was, for trained and random encoders alike (both stay at chance). For the same
reason the demo fine-tunes with ``model.pool=tokens`` (the reference's mean pooling stayed at chance
after 400 steps for every encoder, the training loss at ln 4), and with light augmentation
(``DEMO_FINETUNE_OVERRIDES``: no mixup / cutmix / RandAugment / erasing / drop path, crops of 80-100% of the
frame): with the full recipe 150 steps of 8 clips learned nothing either. ``configs/finetune-tiny-cpu.yaml``
itself keeps the recipe's structure (the tests run it).

What it cannot show: the paper's numbers (80.1 / 82.2 K400 top-1) need Kinetics, ViT-S/B, a ViT-L teacher and
GPU-days; with minutes of CPU, tiny models and 4 synthetic classes the gaps are small and one run is one
sample. Every run resumes (``checkpoint.resume=auto``), so a second run reuses finished work.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

from amd_fast.config import Config, load_config
from amd_fast.errors import run_cli

log = logging.getLogger("amd_fast.demo")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS / "tiny-cpu.yaml"
FINETUNE_CONFIG = CONFIGS / "finetune-tiny-cpu.yaml"
DEMO_OVERRIDES = ["mask.student_ratio=0.5", "mask.teacher_ratio=0.25", "loss.normalize_target=false"]
DEMO_FINETUNE_OVERRIDES = ["model.pool=tokens", "aug.mixup=0", "aug.cutmix=0", "aug.randaugment=", "aug.reprob=0",
                           "model.drop_path=0", "data.rrc_scale=[0.8,1.0]"]
PROBE_POOL = "tokens"


def build_demo_shards(out: Path, count: int, classes: int) -> Path:
    from amd_fast.shard import ShardOptions, build_shards

    build_shards(ShardOptions(src="synthetic", out=out, splits=("train", "val"), codec="vp9", synthetic_count=count,
                              synthetic_classes=classes, samples_per_shard=64, workers=2, seed=0, progress=True))
    return out


def pretrain(config: str, overrides: list, log_dir: Path):
    from amd_fast.trainer.loop import run

    result = run(load_config(config, [*overrides, f"log.dir={log_dir}"]))
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def finetune(shards: Path, encoder, log_dir: Path, steps: int):
    """Fine-tune (from ``encoder``, or random init when None) and test; returns the multi-view EvalResult."""
    from amd_fast.finetune.config import load_finetune_config
    from amd_fast.finetune.trainer import run

    overrides = [f"data.shards={shards}", f"train.max_steps={steps}", "train.epochs=100000", f"log.dir={log_dir}",
                 f"model.pretrained={encoder}" if encoder else "model.pretrained=null", *DEMO_FINETUNE_OVERRIDES]
    result = run(load_finetune_config(FINETUNE_CONFIG, overrides))
    if result.interrupted:
        raise KeyboardInterrupt
    return result.eval


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m amd_fast.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base pretraining config (default: configs/tiny-cpu.yaml)")
    p.add_argument("--out", default="runs/demo", help="logs and checkpoints go here")
    p.add_argument("--shards", default="shards/demo", help="synthetic shards are built (or reused) here")
    p.add_argument("--videos", type=int, default=480, help="synthetic videos (a quarter go to val)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--student-steps", type=int, default=900, help="for each of the two students")
    p.add_argument("--finetune-steps", type=int, default=200, help="for each of the three fine-tunings")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to the pretraining runs")
    args = p.parse_intermixed_args(argv)  # key=value overrides before or after the flags
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return run_cli(lambda: demo(args), "amd_fast.demo", "finished steps are kept; run the same command again")


def demo(args) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    log.info("1/5 synthetic shards in %s", args.shards)
    shards = build_demo_shards(Path(args.shards), args.videos, args.classes)
    # train.epochs is set high so that max_steps alone decides the length of each run.
    common = [f"data.shards={shards}", "checkpoint.resume=auto", "train.epochs=100000", "log.tensorboard=true",
              *DEMO_OVERRIDES, *args.overrides]
    log.info("demo settings (see the module docstring for why): %s", " ".join(DEMO_OVERRIDES))

    log.info("2/5 pretraining a tiny VideoMAE teacher (%d steps)", args.teacher_steps)
    teacher = pretrain(args.config, [*common, "model.student=vit_mini_cpu", "model.teacher=null",
                                     f"train.max_steps={args.teacher_steps}"], out / "teacher")
    teacher_encoder = Path(teacher.checkpoint_dir) / "encoder.pth"

    log.info("3/5 two students of one size and budget (%d steps each): AMD from the teacher, and VideoMAE",
             args.student_steps)
    student_steps = f"train.max_steps={args.student_steps}"
    amd = pretrain(args.config, [*common, "model.teacher=vit_mini_cpu", f"model.teacher_checkpoint={teacher_encoder}",
                                 student_steps], out / "student")
    videomae = pretrain(args.config, [*common, "model.teacher=null", student_steps], out / "student-videomae")
    encoders = {"AMD (distilled)": Path(amd.checkpoint_dir) / "encoder.pth",
                "VideoMAE": Path(videomae.checkpoint_dir) / "encoder.pth", "random init": None}

    log.info("4/5 fine-tuning each (%d steps) and testing on val (2 x 3 views); demo settings: %s",
             args.finetune_steps, " ".join(DEMO_FINETUNE_OVERRIDES))
    tuned = {name: finetune(shards, enc, out / f"finetune-{name.split()[0].lower()}", args.finetune_steps)
             for name, enc in encoders.items()}

    log.info("5/5 linear probes (%s features) of the frozen encoders", PROBE_POOL)
    base_cfg = load_config(args.config, [*common, "model.teacher=null"])
    probes = {name: probe(base_cfg, enc) for name, enc in encoders.items()}

    minutes = (time.perf_counter() - t0) / 60
    last = amd.last
    print(f"\nAMD demo done in {minutes:.1f} min (2 CPU cores; AMD student step {last.get('clips_per_s', 0):.0f} "
          f"clips/s, data wait {100 * last.get('data_wait', 0):.0f}% of step time)")
    print(f"  {'student (vit_tiny_cpu, ' + str(args.student_steps) + ' pretraining steps)':<46} "
          f"{'fine-tuned val top-1':>21} {'linear probe val acc':>21}")
    for name in encoders:
        print(f"  {name:<46} {100 * tuned[name].top1:>20.1f}% {100 * probes[name]['val_acc']:>20.1f}%")
    chance = probes["random init"]["chance"]
    print(f"  (chance = majority class {100 * chance:.1f}%; {tuned['random init'].videos} val videos, "
          f"{tuned['random init'].views} views each; fine-tuning: {args.finetune_steps} steps of "
          f"configs/finetune-tiny-cpu.yaml with the demo's settings)")
    print(f"  runs: {out}/teacher, student, student-videomae, finetune-* (metrics.jsonl, eval/test.json + "
          "confusion PNG, checkpoints)")
    return 0


def probe(cfg: Config, encoder) -> dict:
    """Linear probe (``PROBE_POOL`` features) of a student built from ``encoder`` (None: random init)."""
    from amd_fast.models import build_student, load_pretrained
    from amd_fast.probe import probe_model

    torch.manual_seed(cfg.train.seed + 1)
    student = build_student(cfg.model)
    if encoder is not None:
        load_pretrained(student, encoder)
    return probe_model(student, dataclasses.replace(cfg.data, device="cpu"), pool=PROBE_POOL)


if __name__ == "__main__":
    sys.exit(main())
