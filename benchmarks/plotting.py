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


def plot_ramp(report: dict[str, Any], path: Path) -> None:
    """Ramp benchmark: latency p50/p95 (final, first partial) vs streams, the target, refusals; load beside."""
    plt = _pyplot()
    levels = report["levels"]
    x = [level["streams_offered"] for level in levels]
    fig, (lat, load) = plt.subplots(1, 2, figsize=(14, 5))
    series = (("final_latency_s", "final", "tab:blue"), ("first_partial_latency_s", "first partial", "tab:orange"))
    for key, label, color in series:
        for q, style in (("p95", "o-"), ("p50", "s--")):
            values = [np.nan if level[key][q] is None else level[key][q] for level in levels]
            lat.plot(x, values, style, color=color, label=f"{label} {q}")
    lat.axhline(report["target_s"], color="k", lw=1, ls=":", label=f"target {report['target_s']} s")
    refused = [(level["streams_offered"], level["refused"]) for level in levels if level["refused"]]
    if refused:
        top = report["target_s"] * 1.05
        lat.scatter([r[0] for r in refused], [top] * len(refused), marker="x", s=80, color="tab:red",
                    label="refused", zorder=3)
        for n, count in refused:
            lat.annotate(f"{count} refused", (n, top), textcoords="offset points", xytext=(4, 6), color="tab:red")
    held = report["streams_held_at_target"]
    if held:
        lat.axvline(held, color="tab:green", lw=1, label=f"held at target: {held}")
    from matplotlib.ticker import MaxNLocator

    for ax in (lat, load):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lat.set_xlabel("concurrent streams (offered)")
    lat.set_ylabel("latency (s)")
    lat.set_title(f"{report['model']}: latency vs streams ({report['url']})")
    lat.grid(alpha=0.3)
    lat.legend(fontsize=8)
    for key, label, color in (("cpu_process_percent", "CPU, this process (% of a core)", "tab:purple"),
                              ("cpu_machine_percent", "CPU, machine (% of all cores)", "tab:gray")):
        load.plot(x, [np.nan if level[key] is None else level[key] for level in levels], "o-", color=color,
                  label=label)
    load.set_xlabel("concurrent streams (offered)")
    load.set_ylabel("CPU %")
    load.grid(alpha=0.3)
    engine = load.twinx()
    engine.plot(x, [np.nan if level["engine_busy_fraction"] is None else level["engine_busy_fraction"]
                    for level in levels], "^-", color="tab:red", label="engine busy fraction")
    engine.set_ylabel("engine busy fraction", color="tab:red")
    engine.set_ylim(0, 1.1)
    handles = load.get_legend_handles_labels()
    extra = engine.get_legend_handles_labels()
    load.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    wer_text = "-" if report["wer"] is None else f"{100 * report['wer']:.1f} %"
    load.set_title(f"load (WER of admitted streams {wer_text})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_turns(report: dict[str, Any], path: Path) -> None:
    """Turn-taking benchmark: end-of-turn latency (p50, bar up to p95) against false ends, a point per mode."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    modes = list(dict.fromkeys(run["mode"] for run in report["runs"]))
    colors = {mode: plt.get_cmap("tab10")(i % 10) for i, mode in enumerate(modes)}
    markers = dict(zip(sorted({run["streams"] for run in report["runs"]}), "os^Dv<>p"))
    for run in report["runs"]:
        p50, p95 = run["final_latency_s"]["p50"], run["final_latency_s"]["p95"]
        if p50 is None:
            continue
        x = 100 * (run["false_end_rate"] or 0.0)
        ax.errorbar([x], [p50], yerr=[[0.0], [p95 - p50]], fmt=markers[run["streams"]], color=colors[run["mode"]],
                    capsize=4, markersize=8)
        ax.annotate(f"{run['mode']} x{run['streams']}", (x, p50), textcoords="offset points", xytext=(6, -10),
                    fontsize=8, color=colors[run["mode"]])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker="o", ls="", label=m) for m in modes]
    handles += [Line2D([], [], color="k", marker=mk, ls="", label=f"{n} stream(s)") for n, mk in markers.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_xlabel("false end of turn at a hesitation pause (% of hesitation cases)")
    ax.set_ylabel("final latency after the last word (s): p50, bar up to p95")
    ax.set_xlim(left=-3)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report['model']}: end-of-turn latency vs false ends "
                 f"({report.get('hesitation_cases', 0)} hesitation + "
                 f"{report.get('cases', 0) - report.get('hesitation_cases', 0)} complete cases)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_translation(report: dict[str, Any], path: Path) -> None:
    """Translation benchmark: chrF per language, streamed beside offline."""
    plt = _pyplot()
    langs = list(report["languages"])
    x = np.arange(len(langs))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(langs)), 4.5))
    for offset, key, label in ((-0.2, "chrf_offline", "offline (whole clip)"), (0.2, "chrf_streamed", "streamed")):
        ax.bar(x + offset, [report["languages"][lang][key] for lang in langs], 0.4, label=label)
    ax.set_xticks(x, [f"{lang} ({report['languages'][lang]['clips']})" for lang in langs])
    ax.set_ylabel("chrF against the English references")
    ax.set_title(f"{report['model']}: translate task, streamed vs offline")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
