"""Put the Resemblyzer speaker-encoder weights where the server looks for them (run by ``scripts/setup.sh``).

The weights come from the Resemblyzer 0.1.4 wheel on the package index (Resemble
AI, Apache-2.0), without its dependencies (librosa, webrtcvad…, which we do not
need: ``streaming/speaker_encoder.py`` is our own implementation of the model),
checked against their SHA-256 (``scripts/wheel_files.py``), into
``<venv>/share/streaming-asr/``. Run it with the venv's python, whose ``sys.prefix``
is the venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.wheel_files import main  # noqa: E402
from streaming.speaker_encoder import MODEL_SHA256, default_model_path  # noqa: E402

WHEEL = "resemblyzer==0.1.4"
MEMBER = "resemblyzer/pretrained.pt"

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], WHEEL, MEMBER, MODEL_SHA256, default_model_path()))
