"""The CPU demo: the AMD paper's claim in miniature, end to end on embedded synthetic data.

    python -m amd_fast.demo [--out runs/demo] [--teacher-steps N] [--student-steps N] [--finetune-steps N]

1. Builds synthetic VP9 shards (moving shapes; the class is the direction) with ``amd_fast.shard``,
   reusing them when they are already there.
2. Pretrains a tiny VideoMAE teacher (``model.teacher=null``, ``vit_mini_cpu``).
3. Pretrains two tiny students of the same size (``vit_tiny_cpu``) with the same budget (steps, batch,
   masks, targets): one distilled from the frozen teacher (AMD), one as plain VideoMAE.
4. Fine-tunes each student, and a randomly initialised one, with ``configs/finetune-tiny-cpu.yaml`` and the
   demo's fine-tuning settings (below), and tests them on the val split (2 x 3 views).
5. Linear-probes the three frozen encoders, and prints one table: fine-tuned top-1 and probe accuracy,
   after a table of wall time and clips/s per phase (also in ``<out>/summary.json``).

Steps 2-5 run in two lanes side by side (``--lanes``, one process and one torch thread each): lane 1 is the
teacher -> AMD student -> its fine-tune and probe chain, lane 2 the VideoMAE student, its fine-tune and probe,
then the random-init fine-tune and probe. Measured on 2 cores (VideoMAE student, 150 steps): one 1-thread run
107 clips/s, one 2-thread run 135 (1.26x), two 1-thread runs side by side 91 + 91 = 182 (1.7x); the loader's
data wait stays at 1-2%. So two single-thread lanes use the machine best. Every run keeps one thread also with
``--lanes 1`` (the lanes one after the other), and the results table is the same either way (checked: 3.6 min
with two lanes, 4.9 min with one, the same six numbers).
Lane 1 is the critical path (the AMD student's step costs about twice the VideoMAE student's: it also runs the
teacher), so the step counts (teacher 400, students 600, fine-tunes 200) were chosen from the phase table to
keep the whole demo near 3.6 minutes on the 2-core dev machine, under 10 on one 2.5x slower.

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
import json
import logging
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from amd_fast.config import Config, load_config
from amd_fast.cores import usable_cores
from amd_fast.errors import InputError, RunFailed, run_cli

log = logging.getLogger("amd_fast.demo")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS / "tiny-cpu.yaml"
FINETUNE_CONFIG = CONFIGS / "finetune-tiny-cpu.yaml"
DEMO_OVERRIDES = ["mask.student_ratio=0.5", "mask.teacher_ratio=0.25", "loss.normalize_target=false"]
DEMO_FINETUNE_OVERRIDES = ["model.pool=tokens", "aug.mixup=0", "aug.cutmix=0", "aug.randaugment=", "aug.reprob=0",
                           "model.drop_path=0", "data.rrc_scale=[0.8,1.0]"]
PROBE_POOL = "tokens"


@dataclass
class Phase:
    name: str
    seconds: float
    clips_per_s: Optional[float] = None  # clips trained (or featurised, for a probe) per second of the phase
    note: str = ""


class PhaseLog:
    """Wall time per demo phase, for the closing table and ``summary.json``."""

    def __init__(self):
        self.phases: List[Phase] = []
        self.t0 = time.perf_counter()

    def add(self, name: str, started: float, clips_per_s: Optional[float] = None, note: str = "") -> None:
        self.phases.append(Phase(name, time.perf_counter() - started, clips_per_s, note))

    @property
    def total_s(self) -> float:
        return time.perf_counter() - self.t0

    def table(self) -> str:
        rows = [f"  {'phase':<50} {'wall':>8} {'clips/s':>8}  note"]
        for p in self.phases:
            rate = f"{p.clips_per_s:8.1f}" if p.clips_per_s else f"{'-':>8}"
            rows.append(f"  {p.name:<50} {p.seconds:7.1f}s {rate}  {p.note}")
        rows.append(f"  {'total (wall)':<50} {self.total_s:7.1f}s")
        return "\n".join(rows)


def machine() -> dict:
    """What the timings were measured on."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": usable_cores(), "python": platform.python_version(),
            "torch": torch.__version__}


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
    """Fine-tune (from ``encoder``, or random init when None) and test; returns the FitResult (``.eval``: the
    multi-view test)."""
    from amd_fast.finetune.config import load_finetune_config
    from amd_fast.finetune.trainer import run

    overrides = [f"data.shards={shards}", f"train.max_steps={steps}", "train.epochs=100000", f"log.dir={log_dir}",
                 f"model.pretrained={encoder}" if encoder else "model.pretrained=null", *DEMO_FINETUNE_OVERRIDES]
    result = run(load_finetune_config(FINETUNE_CONFIG, overrides))
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m amd_fast.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base pretraining config (default: configs/tiny-cpu.yaml)")
    p.add_argument("--out", default="runs/demo", help="logs and checkpoints go here")
    p.add_argument("--shards", default="shards/demo", help="synthetic shards are built (or reused) here")
    p.add_argument("--videos", type=int, default=480, help="synthetic videos (a quarter go to val)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--student-steps", type=int, default=600, help="for each of the two students")
    p.add_argument("--finetune-steps", type=int, default=200, help="for each of the three fine-tunings")
    p.add_argument("--lanes", type=int, default=min(2, usable_cores()),
                   help="processes side by side, one torch thread each (default: 2, or 1 on a 1-core machine)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to the pretraining runs")
    args = p.parse_intermixed_args(argv)  # key=value overrides before or after the flags
    for flag in ("videos", "classes", "teacher_steps", "student_steps", "finetune_steps", "lanes"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(args, flag)})")  # exit 2, one line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return run_cli(lambda: demo(args), "amd_fast.demo", "finished steps are kept; run the same command again")


def _lane_logging(name: str) -> None:
    """A lane process logs with its name (two lanes' lines interleave on one terminal)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)


def _lane_distilled(args, shards: Path, common: list) -> dict:
    """Lane 1: the teacher, the AMD student distilled from it, its fine-tune and its probe."""
    out, phases, results = Path(args.out), [], {}
    t = time.perf_counter()
    teacher = pretrain(args.config, [*common, "model.student=vit_mini_cpu", "model.teacher=null",
                                     f"train.max_steps={args.teacher_steps}"], out / "teacher")
    phases.append(Phase("teacher (VideoMAE, vit_mini_cpu)", time.perf_counter() - t, teacher.clips_per_s,
                        f"{teacher.step} steps"))
    teacher_encoder = Path(teacher.checkpoint_dir) / "encoder.pth"
    t = time.perf_counter()
    amd = pretrain(args.config, [*common, "model.teacher=vit_mini_cpu", f"model.teacher_checkpoint={teacher_encoder}",
                                 f"train.max_steps={args.student_steps}"], out / "student")
    phases.append(Phase("student: AMD (distilled)", time.perf_counter() - t, amd.clips_per_s, f"{amd.step} steps"))
    encoder = Path(amd.checkpoint_dir) / "encoder.pth"
    results["AMD (distilled)"] = _tune_and_probe(args, shards, common, "AMD (distilled)", encoder, phases)
    return {"phases": phases, "results": results, "amd_last": amd.last}


def _lane_plain(args, shards: Path, common: list) -> dict:
    """Lane 2: the VideoMAE student with the same budget, its fine-tune and probe, and the random-init baseline."""
    out, phases, results = Path(args.out), [], {}
    t = time.perf_counter()
    videomae = pretrain(args.config, [*common, "model.teacher=null", f"train.max_steps={args.student_steps}"],
                        out / "student-videomae")
    phases.append(Phase("student: VideoMAE", time.perf_counter() - t, videomae.clips_per_s,
                        f"{videomae.step} steps"))
    results["VideoMAE"] = _tune_and_probe(args, shards, common, "VideoMAE",
                                          Path(videomae.checkpoint_dir) / "encoder.pth", phases)
    results["random init"] = _tune_and_probe(args, shards, common, "random init", None, phases)
    return {"phases": phases, "results": results}


def _tune_and_probe(args, shards: Path, common: list, name: str, encoder: Optional[Path], phases: list) -> dict:
    t = time.perf_counter()
    fit = finetune(shards, encoder, Path(args.out) / f"finetune-{name.split()[0].lower()}", args.finetune_steps)
    phases.append(Phase(f"fine-tune + test: {name}", time.perf_counter() - t, fit.clips_per_s,
                        f"{fit.step} steps, test {fit.eval.videos} videos x {fit.eval.views} views"))
    t = time.perf_counter()
    probed = probe(load_config(args.config, [*common, "model.teacher=null"]), encoder)
    seconds, clips = time.perf_counter() - t, probed["num_train"] + probed["num_val"]  # one centre clip per video
    phases.append(Phase(f"linear probe: {name}", seconds, clips / seconds,
                        f"{PROBE_POOL} features of {clips} clips (train + val), then the fit"))
    return {"top1": fit.eval.top1, "views": fit.eval.views, "videos": fit.eval.videos,
            "probe_val_acc": probed["val_acc"], "chance": probed["chance"]}


def _run_lane(lane_name, args, shards, common, results) -> None:
    """A lane process: runs its lane and puts ``(lane, outcome, payload)`` on ``results``; ``outcome`` is how
    the lane ended (``ok``, ``input``, ``failed``, ``interrupted``, ``bug``), which the parent re-raises."""
    _lane_logging(lane_name)
    torch.set_num_threads(1)
    try:
        results.put((lane_name, "ok", LANES[lane_name](args, shards, common)))
    except KeyboardInterrupt:
        results.put((lane_name, "interrupted", ""))
    except InputError as e:
        results.put((lane_name, "input", str(e)))
    except RunFailed as e:
        results.put((lane_name, "failed", str(e)))
    except BaseException:  # a bug: keep its traceback
        results.put((lane_name, "bug", traceback.format_exc()))


def run_lanes(args, shards: Path, common: list) -> dict:
    """The lanes as spawned processes side by side; any lane's failure stops the others (SIGTERM: each
    trainer saves a checkpoint, so a rerun resumes) and is re-raised here as the same kind of error."""
    import multiprocessing as mp
    import queue

    from amd_fast import demo as this  # by its import name, also when run as __main__ (spawn re-imports it)

    ctx = mp.get_context("spawn")  # a fresh interpreter per lane: no forked torch / DALI state
    results = ctx.Queue()
    procs = {name: ctx.Process(target=this._run_lane, name=name,
                               args=(name, args, shards, common + ["log.progress=false"], results))
             for name in LANES}
    for p in procs.values():
        p.start()
    done = {}
    try:
        while len(done) < len(procs):
            try:
                name, outcome, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [n for n, p in procs.items() if n not in done and p.exitcode is not None]
                if dead:  # died without a word (killed, out of memory): wait a moment for a late message
                    try:
                        name, outcome, payload = results.get(timeout=5.0)
                    except queue.Empty:
                        raise RunFailed(f"{dead[0]} died (exit code {procs[dead[0]].exitcode}); rerun the same "
                                        "command to continue from its last checkpoint") from None
                else:
                    continue
            if outcome == "ok":
                done[name] = payload
            elif outcome == "interrupted":
                raise KeyboardInterrupt
            elif outcome == "input":
                raise InputError(payload)
            elif outcome == "failed":
                raise RunFailed(f"{name}: {payload}")
            else:
                raise RuntimeError(f"{name} crashed:\n{payload}")
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: its trainer saves a checkpoint and stops within a step or two
        for p in procs.values():
            p.join()
    return {name: done[name] for name in LANES}  # lane order, whichever finished first


LANES = {"lane 1": _lane_distilled, "lane 2": _lane_plain}


def demo(args) -> int:
    from amd_fast.trainer.run_folder import check_is_folder

    out = Path(args.out)
    check_is_folder(out, "--out")  # before minutes of work, not when the first run writes there
    phases = PhaseLog()
    t = time.perf_counter()
    log.info("1/3 synthetic shards in %s", args.shards)
    shards = build_demo_shards(Path(args.shards), args.videos, args.classes)
    phases.add("shard build", t, note=f"{args.videos} VP9 videos (reused when present)")
    # train.epochs is set high so that max_steps alone decides the length of each run. Each lane trains with
    # one torch thread (deterministic, and two single-thread lanes use 2 cores better than one 2-thread run).
    common = [f"data.shards={shards}", "checkpoint.resume=auto", "train.epochs=100000", "log.tensorboard=true",
              "train.cpu_threads=1", *DEMO_OVERRIDES, *args.overrides]
    log.info("demo settings (see the module docstring for why): %s", " ".join(DEMO_OVERRIDES))
    log.info("2/3 two lanes side by side: [lane 1] teacher (%d steps) -> AMD student (%d) -> fine-tune (%d) -> "
             "probe; [lane 2] VideoMAE student (%d) -> fine-tune -> probe, random init -> fine-tune -> probe",
             args.teacher_steps, args.student_steps, args.finetune_steps, args.student_steps)
    if args.lanes > 1:
        lanes_out = run_lanes(args, shards, common)
    else:
        torch.set_num_threads(1)  # as in the lanes: the same table whichever way it runs
        lanes_out = {name: lane(args, shards, common) for name, lane in LANES.items()}
    log.info("3/3 results")
    for name, lane in lanes_out.items():
        for p in lane["phases"]:
            phases.phases.append(dataclasses.replace(p, name=f"[{name}] {p.name}"))
    results = {k: v for lane in lanes_out.values() for k, v in lane["results"].items()}
    encoders = ["AMD (distilled)", "VideoMAE", "random init"]

    last = lanes_out["lane 1"]["amd_last"]
    print(f"\nAMD demo done in {phases.total_s / 60:.1f} min ({machine()['cores']} CPU cores, {args.lanes} lane(s); "
          f"AMD student step {last.get('clips_per_s', 0):.0f} clips/s, data wait {100 * last.get('data_wait', 0):.0f}% "
          "of step time)")
    print(phases.table())
    print()
    print(f"  {'student (vit_tiny_cpu, ' + str(args.student_steps) + ' pretraining steps)':<46} "
          f"{'fine-tuned val top-1':>21} {'linear probe val acc':>21}")
    for name in encoders:
        print(f"  {name:<46} {100 * results[name]['top1']:>20.1f}% {100 * results[name]['probe_val_acc']:>20.1f}%")
    base = results["random init"]
    print(f"  (chance = majority class {100 * base['chance']:.1f}%; {base['videos']} val videos, "
          f"{base['views']} views each; fine-tuning: {args.finetune_steps} steps of "
          f"configs/finetune-tiny-cpu.yaml with the demo's settings)")
    print(f"  runs: {out}/teacher, student, student-videomae, finetune-* (metrics.jsonl, eval/test.json + "
          f"confusion PNG, checkpoints); timings: {out}/summary.json")
    summary = {"total_s": phases.total_s, "machine": machine(), "lanes": args.lanes,
               "phases": [dataclasses.asdict(p) for p in phases.phases], "results": results,
               "settings": {"teacher_steps": args.teacher_steps, "student_steps": args.student_steps,
                            "finetune_steps": args.finetune_steps, "videos": args.videos}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
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
