"""Write one bench run as JSON (the record), Markdown (the table) and PNG (the chart).

The JSON is the source of truth: ``{"environment", "settings", "entries", "notes"}``
with one entry per measured (or deliberately unmeasured) path, so any ratio can be
recomputed from it. The Markdown and the PNG are derived from the same entries.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("bench.report")

PARTS = ("loaders", "gop", "kernels", "train")


def output_stem(out_dir: Path, env: dict, suffix: str = "") -> Path:
    """``<out>/<device>-<YYYY-MM-DD><suffix>``; the same device and day overwrites (latest run wins)."""
    return Path(out_dir) / f"{env['device_label']}-{env['date'][:10]}{suffix}"


def _atomic_write(path: Path, data: bytes) -> None:
    # Never leave a half-written record behind if the run is interrupted while writing.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_all(record: dict, out_dir: Path, suffix: str = "") -> dict[str, Path]:
    """JSON and Markdown first (the numbers), then the PNG chart, which needs matplotlib (the ``bench``
    extra): without it the chart is skipped with a warning and the numbers are still written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(out_dir, record["environment"], suffix)
    paths = {ext: stem.with_suffix("." + ext) for ext in ("json", "md")}
    _atomic_write(paths["json"], (json.dumps(record, indent=2, default=str) + "\n").encode())
    _atomic_write(paths["md"], markdown(record).encode())
    png = stem.with_suffix(".png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: chart %s skipped (pip install matplotlib, or the bench extra: "
                    "pip install -e .[bench]); the numbers are in %s", png, paths["json"])
        return paths
    png_tmp = png.with_name(png.name + ".tmp")
    chart(record, png_tmp)
    os.replace(png_tmp, png)
    paths["png"] = png
    return paths


# ----------------------------------------------------------------------------- formatting


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0 or math.isnan(v):
            return f"{v:g}"
        mag = math.floor(math.log10(abs(v)))
        return f"{v:.{max(0, digits - 1 - mag)}f}" if mag < digits else f"{v:,.0f}"
    return str(v)


def _bytes(v) -> str:
    if v is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _spread(e: dict, key: str) -> str:
    s = e.get(key)
    return f"{_fmt(s[0])}–{_fmt(s[1])}" if s else "–"


# ----------------------------------------------------------------------------- ratios


def kernel_speedups(entries: list[dict]) -> dict[tuple, dict[str, float]]:
    """(op, shape, batch) -> {impl: amd_reference time / impl time} for the measured kernel rows."""
    by_key: dict[tuple, dict[str, float]] = defaultdict(dict)
    for e in entries:
        if e["part"] == "kernels" and e.get("ms_median"):
            by_key[(e["op"], e["shape"], e.get("batch"))][e["impl"]] = e["ms_median"]
    out = {}
    for key, times in by_key.items():
        ref = times.get("amd_reference")
        if ref:
            out[key] = {impl: ref / t for impl, t in times.items()}
    return out


def loader_speedups(entries: list[dict]) -> dict[tuple, tuple[float, float]]:
    """(codec, workers, peer) -> (DALI clips/s ÷ peer's, DALI clips per CPU-second ÷ peer's), DALI at one
    pipeline, every loader at the same worker/thread count on the same shards."""
    rates: dict[tuple, dict[str, tuple]] = defaultdict(dict)
    for e in entries:
        if e["part"] == "loaders" and e.get("kind") == "clips" and e.get("clips_per_s") and e.get("pipelines") in (None, 1):
            rates[(e.get("codec"), e["workers"])][e.get("loader", e["backend"])] = (e["clips_per_s"],
                                                                                    e.get("cpu_s_per_clip"))
    out = {}
    for (codec, workers), r in rates.items():
        if "dali" not in r:
            continue
        for peer, (clips, cpu) in r.items():
            if peer != "dali":
                d_clips, d_cpu = r["dali"]
                out[(codec, workers, peer)] = (d_clips / clips, cpu / d_cpu if cpu and d_cpu else float("nan"))
    return out


def train_speedups(entries: list[dict]) -> dict[str, float]:
    """model pair -> fast clips/s ÷ all-eager clips/s."""
    rates: dict[str, dict[str, float]] = defaultdict(dict)
    for e in entries:
        if e["part"] == "train" and e.get("clips_per_s"):
            rates[e["model"]][e["path"]] = e["clips_per_s"]
    return {m: r["fast"] / r["eager"] for m, r in rates.items() if "fast" in r and "eager" in r}


# ----------------------------------------------------------------------------- markdown


def _ms(v) -> str:
    return _fmt(1000 * v) if v else "–"


def eager_over_peers(entries: list[dict]) -> dict[tuple, float]:
    """(codec, workers, peer) -> the eager loader's clips per CPU-second ÷ the peer's, at equal workers."""
    cpu: dict[tuple, dict[str, float]] = defaultdict(dict)
    for e in entries:
        if e["part"] == "loaders" and e.get("kind") == "clips" and e.get("cpu_s_per_clip") and e.get("pipelines") in (None, 1):
            cpu[(e.get("codec"), e["workers"])][e.get("loader", e["backend"])] = e["cpu_s_per_clip"]
    return {(c, w, peer): t / r["eager"] for (c, w), r in cpu.items() if "eager" in r
            for peer, t in r.items() if peer != "eager"}


def _md_loaders(entries: list[dict]) -> str:
    rows, decode, limits = [], [], []
    for e in entries:
        if e.get("kind") == "decode":
            decode.append([e["backend"], str(e.get("codec", "–")), str(e.get("threads", "–")), _fmt(e.get("frames_per_s")),
                           _spread(e, "frames_per_s_spread"), str(e.get("videos", "–")), e.get("status", "measured")])
        elif e.get("kind") == "decode_limit":
            limits.append([str(e["codec"]), _fmt(e["decoded_frames_per_clip"]), _fmt(e["clips_per_cpu_s"]),
                           _ms(1 / e["clips_per_cpu_s"])])
        else:
            util = e.get("decoder_utilisation_pct")
            frac, main = e.get("decode_limit_fraction"), e.get("main_cpu_s_per_clip")
            rows.append([e.get("loader", e["backend"]), str(e.get("codec", "–")), str(e["workers"]),
                         str(e.get("pipelines") or "–"), str(e.get("batch_size", "–")), str(e.get("num_sample", "–")),
                         _fmt(e.get("clips_per_s")), _spread(e, "clips_per_s_spread"), _ms(e.get("cpu_s_per_clip")),
                         f"{100 * frac:.0f} %" if frac else "–", _fmt(100 * main) if main is not None else "–",
                         _fmt(util) + " %" if util is not None else "–", e.get("status", "measured")])
    out = ["### Loading (clips/s and CPU ms per clip)", "",
           _table(["loader", "codec", "workers", "DALI pipelines", "batch", "crops/video", "clips/s (median)",
                   "min–max", "CPU ms/clip", "decode-limit fraction", "main proc cores per 100 clips/s",
                   "NVDEC util", "status"], rows)]
    if limits:
        out += ["", "Decode limit in clips (PyAV, one thread, frames left in YUV; frames a clip costs computed from "
                "the GOP):", "", _table(["codec", "decoded frames per clip", "clips per CPU-s", "CPU ms/clip"], limits)]
    peers = eager_over_peers(entries)
    if peers:
        out += ["", "The eager loader over each peer at equal workers, clips per CPU-second:", "",
                _table(["codec", "workers", "peer", "eager ÷ peer"],
                       [[str(c), str(w), p, f"×{_fmt(r)}"] for (c, w, p), r in sorted(peers.items())])]
    ratios = loader_speedups(entries)
    if ratios:
        out += ["", "DALI (1 pipeline) over each peer at equal workers, clips/s and clips per CPU-second:", "",
                _table(["codec", "workers", "peer", "clips/s ratio", "clips per CPU-s ratio"],
                       [[str(c), str(w), p, f"×{_fmt(a)}", f"×{_fmt(b)}"] for (c, w, p), (a, b) in sorted(ratios.items())])]
    if decode:
        out += ["", "Decode alone (codec only, frames/s):", "",
                _table(["decoder", "codec", "threads", "frames/s (median)", "min–max", "videos", "status"], decode)]
    return "\n".join(out)


def _md_gop(entries: list[dict]) -> str:
    rows = [[str(e["gop"]), e["codec"], e["loader"], _fmt(e.get("clips_per_s")), _ms(e.get("cpu_s_per_clip")),
             _fmt(e["bytes_per_video"] / 1e3), _fmt(e["decoded_per_delivered_frame"]), e.get("status", "measured")]
            for e in entries]
    return "\n".join(["### GOP sweep (same videos at each keyframe interval)", "",
                      _table(["GOP", "codec", "loader", "clips/s", "CPU ms/clip", "kB/video",
                              "decoded frames per clip frame (computed)", "status"], rows)])


def _md_kernels(entries: list[dict]) -> str:
    speed = kernel_speedups(entries)
    rows = []
    for e in entries:
        ratio = speed.get((e["op"], e["shape"], e.get("batch")), {}).get(e["impl"])
        rows.append([e["op"], e["shape"], str(e.get("batch", "–")), e["impl"], _fmt(e.get("ms_median")),
                     _spread(e, "ms_spread"), f"×{_fmt(ratio)}" if ratio else "–",
                     f"{_bytes(e.get('bytes_modeled'))} / {_bytes(e.get('bytes_modeled_reference'))}",
                     _fmt(e.get("gbps")),
                     _fmt(100 * e["bw_fraction"]) + " %" if e.get("bw_fraction") is not None else "–",
                     _bytes(e.get("peak_mem_bytes")), e.get("status", "measured")])
    return "\n".join(["### Kernels (forward + backward, ms, lower is better)", "",
                      _table(["op", "shape", "B", "impl", "ms (median)", "min–max", "vs AMD ref",
                              "modeled bytes (fused / AMD-style)", "GB/s", "% peak BW", "peak mem", "status"], rows)])


def _md_train(entries: list[dict]) -> str:
    rows = []
    for e in entries:
        rows.append([e["model"], e.get("config", "–"), e["path"], e.get("loader", "–"), str(e.get("workers", "–")),
                     e.get("ops", "–"), e.get("attention", "–"), e.get("clip", "–"), str(e.get("batch_clips", "–")), _fmt(e.get("steps_per_s")), _spread(e, "steps_per_s_spread"),
                     _fmt(e.get("clips_per_s")),
                     _fmt(100 * e["data_wait_fraction"]) + " %" if e.get("data_wait_fraction") is not None else "–",
                     e.get("status", "measured")])
    out = ["### Training step (higher is better)", "",
           _table(["student / teacher", "config", "path", "loader", "workers", "ops", "attention", "clip", "clips/step",
                   "steps/s (median)",
                   "min–max", "clips/s", "data wait", "status"], rows)]
    ratios = train_speedups(entries)
    if ratios:
        out += ["", "fast ÷ all-eager clips/s: " + ", ".join(f"{m}: ×{_fmt(r)}" for m, r in ratios.items())]
    return "\n".join(out)


def markdown(record: dict) -> str:
    env = record["environment"]
    dev = env.get("gpu_name") or env.get("cpu_model")
    head = [
        f"## Bench {env['date']} on {env['device']} ({dev})", "",
        "torch {torch} · triton {triton} · DALI {dali} · PyAV {av} · timm {timm} · python {python} · "
        "{cpu_count} CPU cores, {torch_threads} torch threads".format(**env),
    ]
    if env.get("loadavg_start"):
        head.append(f"· load average (1/5/15 min) at start {env['loadavg_start']}, at end {env.get('loadavg_end')}")
    if env.get("peak_bandwidth_bytes_per_s"):
        head.append(f"· peak DRAM bandwidth {env['peak_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (published)")
    head += ["", "Settings: " + ", ".join(f"`{k}={v}`" for k, v in record.get("settings", {}).items())]
    body = []
    renderers = {"loaders": _md_loaders, "gop": _md_gop, "kernels": _md_kernels, "train": _md_train}
    for part in PARTS:
        part_entries = [e for e in record["entries"] if e["part"] == part]
        if part_entries:
            body += ["", renderers[part](part_entries)]
    notes = record.get("notes") or []
    if notes:
        body += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(head + body) + "\n"


# ----------------------------------------------------------------------------- chart


def chart(record: dict, path: Path) -> None:
    """One panel per measured part: loaders (clips/s vs workers), kernels (ms, log), train (clips/s)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    parts = [p for p in PARTS if any(e["part"] == p for e in record["entries"])]
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(6.5 * max(1, len(parts)), 4.8), squeeze=False)
    env = record["environment"]
    fig.suptitle(f"amd_fast bench · {env['device']} ({env.get('gpu_name') or env.get('cpu_model')}) · {env['date'][:10]}",
                 fontsize=10)
    for ax, part in zip(axes[0], parts):
        entries = [e for e in record["entries"] if e["part"] == part]
        {"loaders": _chart_loaders, "gop": _chart_gop, "kernels": _chart_kernels, "train": _chart_train}[part](ax, entries)
    if not parts:
        axes[0][0].text(0.5, 0.5, "no parts measured", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _errbar(entries: list[dict], key: str, spread_key: str) -> tuple[list[float], list[list[float]]]:
    vals, err = [], [[], []]
    for e in entries:
        v = e.get(key) or 0.0
        s = e.get(spread_key) or [v, v]
        vals.append(v)
        err[0].append(max(0.0, v - s[0]))
        err[1].append(max(0.0, s[1] - v))
    return vals, err


def _chart_loaders(ax, entries: list[dict]) -> None:
    clips = [e for e in entries if e.get("kind") != "decode" and e.get("clips_per_s") and e.get("pipelines") in (None, 1)]
    for key in sorted({(e.get("loader", e["backend"]), e.get("codec")) for e in clips}, key=str):
        rows = sorted((e for e in clips if (e.get("loader", e["backend"]), e.get("codec")) == key),
                      key=lambda e: e["workers"])
        vals, err = _errbar(rows, "clips_per_s", "clips_per_s_spread")
        ax.errorbar([e["workers"] for e in rows], vals, yerr=err, marker="o", capsize=3, label=f"{key[0]} ({key[1]})")
    ax.set_xlabel("workers / threads")
    ax.set_ylabel("clips/s")
    ax.set_title("Loading (DALI: 1 pipeline)")
    if clips:
        ax.legend(fontsize=8)
        ax.set_xticks(sorted({e["workers"] for e in clips}))


def _chart_gop(ax, entries: list[dict]) -> None:
    for loader in sorted({e["loader"] for e in entries}):
        rows = sorted((e for e in entries if e["loader"] == loader and e.get("clips_per_s")), key=lambda e: e["gop"])
        ax.plot([e["gop"] for e in rows], [e["clips_per_s"] for e in rows], marker="o", label=f"{loader} clips/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GOP (frames)")
    ax.set_ylabel("clips/s")
    ax.set_title("GOP sweep")
    rows = sorted({e["gop"]: e for e in entries}.values(), key=lambda e: e["gop"])
    if rows:
        twin = ax.twinx()
        twin.plot([e["gop"] for e in rows], [e["bytes_per_video"] / 1e3 for e in rows], "k--", label="kB/video")
        twin.set_ylabel("kB per video (dashed)")
        ax.legend(fontsize=8)


def _chart_kernels(ax, entries: list[dict]) -> None:
    groups = list(dict.fromkeys((e["op"], e["shape"]) for e in entries))  # run order: op by op, shape by shape
    impls = [i for i in ("amd_reference", "eager", "triton") if any(e["impl"] == i for e in entries)]
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        rows = [next((e for e in entries if (e["op"], e["shape"]) == g and e["impl"] == impl), {}) for g in groups]
        vals, err = _errbar(rows, "ms_median", "ms_spread")
        xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, vals, width, yerr=err, capsize=2, label=impl)
        for x, r in zip(xs, rows):
            if not r.get("ms_median"):
                ax.text(x, 0.02, "n/m", rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())  # axis-relative y: works on a log scale
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{op}\n{shape}" for op, shape in groups], fontsize=7)
    if any(e.get("ms_median") for e in entries):
        ax.set_yscale("log")
    ax.set_ylabel("fwd+bwd ms (log)")
    ax.set_title("Kernels (n/m = not measured)")
    ax.legend(fontsize=8)


def _chart_train(ax, entries: list[dict]) -> None:
    models = list(dict.fromkeys(e["model"] for e in entries))
    paths = list(dict.fromkeys(e["path"] for e in entries))
    width = 0.8 / max(1, len(paths))
    for j, p in enumerate(paths):
        rows = [next((e for e in entries if e["model"] == m and e["path"] == p), {}) for m in models]
        xs = [i + (j - (len(paths) - 1) / 2) * width for i in range(len(models))]
        ax.bar(xs, [r.get("clips_per_s") or 0 for r in rows], width, label=p)
        for x, r in zip(xs, rows):
            if r.get("data_wait_fraction") is not None:
                ax.text(x, r.get("clips_per_s") or 0, f"wait {100 * r['data_wait_fraction']:.0f}%",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, fontsize=8)
    ax.set_ylabel("clips/s")
    ax.set_title("Training step")
    ax.legend(fontsize=8)
