"""Linear probe on frozen encoder features: how much class information a pretrained student holds.

Features are ``student.encoder_features(video)`` (all tokens visible, final norm, mean over tokens) of one
centre clip per video (``DataConfig(train=False)``). The probe is multinomial logistic regression on the
standardised features, fitted full-batch with L-BFGS (deterministic, no learning rate to tune), L2
penalty ``weight_decay``; the score is top-1 accuracy on the other split.

    python -m amd_fast.probe --config configs/tiny-cpu.yaml --weights runs/tiny-cpu/checkpoints/encoder.pth

It fits on ``--train-split`` (default train) and scores on ``--val-split`` (default val; e.g. ``test`` for
UCF101 / HMDB51 shards). Both splits are opened, and the weights checked (shapes, depth, NaN / inf), before
any feature is extracted: bad input exits 2 with one line naming it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from amd_fast.data import DataConfig, build_loader
from amd_fast.models.unwrap import unwrap

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(model: nn.Module, data_cfg: DataConfig, split: str, pool: str = "mean"
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features float32 on CPU, labels (N,)) for every video of ``split``, one centre clip each;
    ``pool`` as ``encoder_features`` ('mean' -> (N, D), 'tokens' -> (N, tokens*D))."""
    cfg = dataclasses.replace(data_cfg, split=split, train=False, num_sample=1, drop_last=False, shuffle=False)
    loader = build_loader(cfg, 0, 1)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    feats, labels = [], []
    for batch in loader:
        feats.append(net.encoder_features(batch["video"], pool=pool).float().cpu())
        labels.append(batch["label"].cpu())
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
                            max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression on ``x`` (already standardised), full-batch L-BFGS."""
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def linear_probe(train: Tuple[torch.Tensor, torch.Tensor], val: Tuple[torch.Tensor, torch.Tensor],
                 weight_decay: float = 1e-3) -> Dict[str, float]:
    """Fit on ``train`` features, report top-1 accuracy on both splits."""
    (xt, yt), (xv, yv) = train, val
    mean, std = xt.mean(0, keepdim=True), xt.std(0, keepdim=True) + 1e-6
    xt, xv = (xt - mean) / std, (xv - mean) / std
    num_classes = int(max(yt.max(), yv.max())) + 1
    head = fit_logistic_regression(xt, yt, num_classes, weight_decay)
    with torch.no_grad():
        acc = lambda x, y: (head(x).argmax(1) == y).float().mean().item()  # noqa: E731
        return {"train_acc": acc(xt, yt), "val_acc": acc(xv, yv), "num_train": len(yt), "num_val": len(yv),
                "chance": float(torch.bincount(yv).max()) / len(yv)}


def probe_model(model: nn.Module, data_cfg: DataConfig, train_split: str = "train", val_split: str = "val",
                weight_decay: float = 1e-3, pool: str = "mean") -> Dict[str, float]:
    return linear_probe(extract_features(model, data_cfg, train_split, pool),
                        extract_features(model, data_cfg, val_split, pool), weight_decay)


def _fine_tuning_config(path) -> None:
    """A ConfigError that says so when ``path`` is a fine-tuning config (aug / eval sections, model.arch)."""
    import yaml

    from amd_fast.config import ConfigError

    try:
        raw = yaml.safe_load(open(path))
    except Exception:  # unreadable: the original error says why
        return
    if isinstance(raw, dict) and ({"aug", "eval"} & set(raw) or "arch" in (raw.get("model") or {})):
        raise ConfigError(f"{path} is a fine-tuning config (aug / eval sections, model.arch): the probe takes a "
                          "pretraining config (model.student, data), e.g. configs/tiny-cpu.yaml or the one the "
                          "encoder was pretrained with")


def main(argv: Optional[list] = None) -> int:
    from amd_fast.errors import run_cli

    p = argparse.ArgumentParser(prog="python -m amd_fast.probe", description="Linear probe of a student encoder.")
    p.add_argument("--config", required=True, help="the training YAML (model + data sections are used)")
    p.add_argument("--weights", help="encoder.pth / training checkpoint; omitted: a randomly initialised student")
    p.add_argument("--pool", choices=("mean", "tokens"), default="mean",
                   help="features per clip: mean over tokens (default) or all tokens flattened")
    p.add_argument("--train-split", default="train", help="the split the probe is fitted on (default: train)")
    p.add_argument("--val-split", default="val", help="the split it is scored on (default: val; UCF101 / HMDB51: test)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_intermixed_args(argv)  # key=value overrides before or after the flags
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def probe() -> None:
        from amd_fast.config import ConfigError, load_config
        from amd_fast.finetune.evaluate import open_splits
        from amd_fast.models import build_student, load_pretrained

        if args.weights is not None and not args.weights.strip():
            raise ConfigError("--weights is empty (the probe would score a random encoder): give the weights file, "
                              "or leave --weights out to probe a random one on purpose")
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError:
            _fine_tuning_config(args.config)  # a clearer message for the likely mix-up, else the original
            raise
        splits = open_splits(cfg.data.shards, [("--train-split", args.train_split), ("--val-split", args.val_split)])
        for split, found in splits.items():
            if found.manifest is not None and not found.manifest.get("classes"):
                raise ConfigError(f"the {split!r} shards carry no class labels (their manifest lists no classes): "
                                  "a linear probe needs labelled shards; build them from a labelled source")
        if args.train_split == args.val_split:
            log.warning("--train-split and --val-split are both %r: the val acc is on the videos the probe was "
                        "fitted on", args.val_split)
        torch.manual_seed(cfg.train.seed)
        student = build_student(cfg.model)
        if args.weights:  # encoder.pth, a VideoMAE/AMD checkpoint or one of our step-*.pt: the encoder is what counts
            load_pretrained(student, args.weights)
        device = "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
        res = probe_model(student.to(device), dataclasses.replace(cfg.data, device=device), args.train_split,
                          args.val_split, pool=args.pool)
        print(f"linear probe: train acc {res['train_acc']:.3f}, val acc {res['val_acc']:.3f} "
              f"({res['num_train']} {args.train_split} / {res['num_val']} {args.val_split} videos, majority class "
              f"{res['chance']:.3f})")

    return run_cli(probe, "amd_fast.probe")


if __name__ == "__main__":
    sys.exit(main())
