"""The worker logs no Hugging Face progress bars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_worker_disables_hugging_face_progress_bars():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    probe = ("import worker.celery_app\n"
             "from transformers.utils import logging\n"
             "print(logging.is_progress_bar_enabled())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_gitignore_covers_the_quick_start():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"var/", "adapters/", ".venv/"} <= set(ignored)
