"""Evaluation helpers shared by tests and benchmarks: manifests, clips, WER."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def eval_dir() -> Path:
    """The shared evaluation folder: ``$STREAMING_EVAL_DIR`` or ``../shared/eval`` beside the repo."""
    env = os.environ.get("STREAMING_EVAL_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "eval"


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str
    language: str
    duration_s: float

    def load(self, sample_rate_hz: int = 16_000) -> np.ndarray:
        """Mono float32 samples at ``sample_rate_hz``."""
        return load_audio(self.path, sample_rate_hz)


def load_manifest(path: str | Path) -> list[Clip]:
    """Read a JSONL manifest (``id``, ``path`` relative to the manifest, ``text``, ``language``, ``duration_s``)."""
    path = Path(path)
    clips = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        clips.append(Clip(row["id"], path.parent / row["path"], row["text"], row.get("language", "en"),
                          float(row.get("duration_s", 0.0))))
    return clips


def dev_clips(full: bool = False) -> list[Clip]:
    return load_manifest(eval_dir() / ("dev-full.jsonl" if full else "dev.jsonl"))


def load_audio(path: str | Path, sample_rate_hz: int = 16_000) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate_hz`` (resampled if needed)."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1).astype(np.float32)
    if rate != sample_rate_hz:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate_hz).astype(np.float32)
    return mono


@lru_cache(maxsize=1)
def _english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalize_english(text: str) -> str:
    return _english_normalizer()(text)


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (0..1) after Whisper's English normalizer on both sides."""
    import jiwer

    refs, hyps = [], []
    for r, h in zip(references, hypotheses, strict=True):
        r, h = normalize_english(r), normalize_english(h)
        if not r.strip():
            continue
        refs.append(r)
        hyps.append(h if h.strip() else "<empty>")
    return float(jiwer.wer(refs, hyps))


TRANSLATIONS_FILE = REPO_ROOT / "benchmarks" / "data" / "translations-en.jsonl"
"""English reference translations of the non-English dev clips (written for this project)."""


def load_translations(path: str | Path = TRANSLATIONS_FILE) -> dict[str, str]:
    """Clip id -> English reference translation."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = row["en"]
    return out


def chrf(references: list[str], hypotheses: list[str]) -> float:
    """Corpus chrF (0..100, sacrebleu's defaults: character 6-grams, beta 2) of English hypotheses."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf([h.strip() for h in hypotheses], [[r.strip() for r in references]]).score)
