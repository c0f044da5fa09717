"""Put the Smart Turn v3.2 model where the server looks for it (run by ``scripts/setup.sh``).

The file comes from the pipecat-ai 1.14.0 wheel on the package index (the model
is Daily's, BSD-2-Clause, shipped inside pipecat), checked against its SHA-256
(``scripts/wheel_files.py``), into ``<venv>/share/streaming-asr/``. Run it with the
venv's python, whose ``sys.prefix`` is the venv.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.wheel_files import main  # noqa: E402
from streaming.smart_turn import MODEL_FILE, MODEL_SHA256, default_model_path  # noqa: E402

WHEEL = "pipecat-ai==1.14.0"
MEMBER = f"pipecat/audio/turn/smart_turn/data/{MODEL_FILE}"

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], WHEEL, MEMBER, MODEL_SHA256, default_model_path()))
