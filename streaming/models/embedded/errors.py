"""What can go wrong loading an embedded model: a missing package or file, a bad model.bin."""

from __future__ import annotations


class EmbeddedModelError(RuntimeError):
    """An embedded model cannot be loaded (base class of the specific errors below)."""


class EmbeddedModelNotInstalledError(EmbeddedModelError):
    """The PyPI package carrying an embedded model is not installed, or a file of it is missing."""


class Ct2FormatError(EmbeddedModelError):
    """A CTranslate2 model file is truncated, corrupt or not a Whisper model we can convert."""
