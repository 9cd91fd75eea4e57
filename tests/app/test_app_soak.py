"""The real app at camera rate, captioning continuously, answering and saving, for a while: alive,
answering, memory flat. ``make soak`` runs the same script for 10 minutes.

The app runs in its own process through ``blip-cam``'s entry point, so a crash (the Qt binding
freeing ``None`` aborted it after ~15 s at 30 fps) fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "blip-scenes-demo"
SECONDS = float(os.environ.get("BLIP_SOAK_SECONDS", "30"))


@pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="the bundled demo model is not built")
def test_app_survives_camera_rate(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "soak.py"), "--seconds", str(SECONDS),
                          "--question-every", "3", "--snapshot-every", "10",
                          "--threads", "1"],  # make test runs other tests on the other core meanwhile
                         env=env, capture_output=True, text=True, timeout=SECONDS + 240)
    assert run.returncode in (0, 1), f"the app died (status {run.returncode}):\n{run.stderr[-3000:]}"
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], summary
    # at 30 fps the demo model captions every frame or nearly: at least one caption per 4 frames
    assert summary["captions"] >= summary["frames_shown"] / 4 > SECONDS
    # questions start once the models are loaded (a few seconds on a busy machine); judge() checks
    # that every question asked but the last was answered
    assert summary["answers"] >= SECONDS / 6 and summary["snapshots"] >= 2
