"""CTranslate2's model.bin format: read (also from split parts, as one stream) and write.

The layout (``ctranslate2/specs/model_spec.py``, ``_serialize``), all little-endian::

    u32 version (6) | str spec name | u32 revision | u32 variable count
    per variable: str name | u8 rank | u32 dim * rank | u8 dtype | u32 nbytes | data
    u32 alias count | (str alias, str target) * count

where ``str`` is a u16 length (including a trailing NUL) followed by the bytes.
Pure Python: no ctranslate2 needed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from streaming.models.embedded.errors import Ct2FormatError, EmbeddedModelNotInstalledError

CT2_BINARY_VERSION = 6
"""The only model.bin format version this parser understands (ctranslate2 4.x writes 6)."""

_CT2_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16,
)
"""CTranslate2's dtype ids, in order (``model_spec._dtype_to_type_id``)."""


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
