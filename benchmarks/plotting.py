"""The benchmarks' plots (matplotlib, headless): one function per benchmark, one figure per call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display), its own logger quiet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    return plt


def plot_reports(reports: list[dict[str, Any]], path: Path) -> None:
    """N-stream benchmark: latency CDFs per stream count, WER and engine load per stream count."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for rep in reports:
        for ax, key in zip(axes[:2], ("first_partial", "final")):
            values = sorted(rep["latencies"][key])
            if values:
                ax.plot(values, np.linspace(0, 1, len(values)), label=f"{rep['streams']} stream(s)")
    axes[0].set_title("first partial latency (CDF)")
    axes[1].set_title("final latency after end of speech (CDF)")
    for ax in axes[:2]:
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend()
    n = [r["streams"] for r in reports]
    x = np.arange(len(n))
    axes[2].bar(x, [100 * (r["wer_en"] or 0) for r in reports], color="tab:blue", alpha=0.7)
    axes[2].set_xticks(x, [str(v) for v in n])
    axes[2].set_ylabel("WER % (English)", color="tab:blue")
    engine_load = axes[2].twinx()
    engine_load.plot(x, [(r["rtf"] or 0) * r["streams"] for r in reports], "o-", color="tab:red")
    engine_load.set_ylabel("engine busy fraction (RTF x streams)", color="tab:red")
    engine_load.set_ylim(0, max(1.05, max((r["rtf"] or 0) * r["streams"] for r in reports) * 1.1))
    axes[2].set_xlabel("concurrent streams")
    axes[2].set_title(f"{reports[0]['model']}: WER and engine load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_qwen3(results: dict, path: Path) -> None:
    """Qwen3-ASR model-only benchmark: per-step latency and recomputed work vs stream length."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for run in results["runs"]:
        t = [r["t_s"] for r in run["steps"]]
        style = "k--" if run["mode"] == "refeed" else "-"
        for ax, key in zip(axes, ("latency_ms", "encoder_frames", "decoder_positions")):
            ax.plot(t, [r[key] for r in run["steps"]], style, label=run["mode"])
    for ax, title in zip(axes, ("step latency (ms)", "encoder frames recomputed", "decoder positions recomputed")):
        ax.set_xlabel("stream length (s)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    cfg = results["config"]
    fig.suptitle(f"Qwen3-ASR {cfg['arch']} (random weights) on {cfg['device']} {cfg['dtype']}, "
                 f"{cfg['new_tokens']} new tokens/step: streaming cache vs re-feed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
