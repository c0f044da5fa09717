"""Qwen3-ASR's text side: chat-template prompt ids, language names, parsing ``language X<asr_text>text``,
and word boundaries for stable text (CJK characters are words of their own)."""

from __future__ import annotations

import unicodedata
from typing import Any

from streaming.models.base import Hypothesis, UtteranceOptions

AUDIO_START = "<|audio_start|>"
AUDIO_END = "<|audio_end|>"
AUDIO_PAD = "<|audio_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
ASR_TEXT = "<asr_text>"
SPECIAL_TOKENS = (AUDIO_START, AUDIO_END, AUDIO_PAD, IM_START, IM_END, ENDOFTEXT, ASR_TEXT)


def language_names() -> dict[str, str]:
    """Language code -> the name Qwen3-ASR writes (``"en" -> "English"``), from transformers."""
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    return dict(LANGUAGE_CODE_TO_NAME)


def is_cjk(c: str) -> bool:
    """Whether ``c`` is a CJK ideograph, kana or hangul: a word boundary on either side."""
    return "CJK" in unicodedata.name(c, "") or "HIRAGANA" in unicodedata.name(c, "") \
        or "KATAKANA" in unicodedata.name(c, "") or "HANGUL" in unicodedata.name(c, "")


class Qwen3Text:
    """Prompts and output parsing with one tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.language_names = language_names()
        self._name_to_code = {v.lower(): k for k, v in self.language_names.items()}

    def language_name(self, language: str) -> str | None:
        """The model's name for a language given as a code or a name; ``None`` if unsupported."""
        lang = language.strip()
        if lang.lower() in self._name_to_code:
            return self.language_names[self._name_to_code[lang.lower()]]
        return self.language_names.get(lang.lower())

    def language_code(self, name: str | None) -> str | None:
        if not name:
            return None
        return self._name_to_code.get(name.strip().lower(), name.strip())

    def prompt_ids(self, options: UtteranceOptions) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio tokens, as the official chat template lays them out."""
        context = options.context or ""
        head = f"{IM_START}system\n{context}{IM_END}\n{IM_START}user\n{AUDIO_START}"
        suffix = f"{AUDIO_END}{IM_END}\n{IM_START}assistant\n"
        if options.language:
            suffix += f"language {self.language_name(options.language)}{ASR_TEXT}"
        enc = self.tokenizer
        return (enc.encode(head, add_special_tokens=False), enc.encode(suffix, add_special_tokens=False))

    def split_output(self, language: str | None, toks: list[int]) -> tuple[str | None, list[int]]:
        """(language name, text tokens) of an assistant output ``language X<asr_text>text``.

        ``language`` is the one the prompt forced (then the output is all text), or ``None``.
        """
        if language:
            return self.language_name(language), toks
        marker = self.ids[ASR_TEXT]
        if marker is not None and marker in toks:
            k = toks.index(marker)
            head = self.tokenizer.decode(toks[:k], skip_special_tokens=True).strip()
            name = head[len("language "):].strip() if head.lower().startswith("language ") else head
            if name.lower() == "none":
                name = ""
            return (name or None), toks[k + 1:]
        return None, []  # still inside the language tag: no text yet

    def parse(self, language: str | None, toks: list[int]) -> tuple[str | None, str]:
        """(language code, text) of a whole output."""
        name, text_toks = self.split_output(language, toks)
        text = self.tokenizer.decode(text_toks, skip_special_tokens=True).strip()
        return self.language_code(name), text

    def hypothesis(self, language: str | None, stable: list[int], tail: list[int]) -> Hypothesis:
        """A partial from the stable and tentative output tokens."""
        full = stable + tail
        name, text_toks = self.split_output(language, full)
        offset = len(full) - len(text_toks)
        n_stable = max(0, len(stable) - offset)
        # Report stable text only up to a confirmed word boundary, so no half word is ever final.
        cut = 0
        for j in range(n_stable, 0, -1):
            if self.boundary_before(text_toks, j, next_stable=j < n_stable):
                cut = j
                break
        dec = self.tokenizer.decode
        stable_text = dec(text_toks[:cut], skip_special_tokens=True).strip()
        unstable_text = dec(text_toks[cut:], skip_special_tokens=True).strip()
        code = self.language_code(name) if offset <= len(stable) else None
        return Hypothesis(stable_text, unstable_text, language=code)

    def boundary_before(self, toks: list[int], j: int, next_stable: bool) -> bool:
        """Whether a word surely ends between ``toks[j - 1]`` and ``toks[j]``."""
        prev = self.tokenizer.decode(toks[j - 1:j])
        if "\ufffd" in prev or not prev:
            return False
        c = prev[-1]
        if is_cjk(c) or not (c.isalnum() or c == "'"):
            return True
        if not next_stable:
            return False
        nxt = self.tokenizer.decode(toks[j:j + 1])
        return nxt[:1].isspace()
