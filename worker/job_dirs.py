"""Where a job's files live on this host: its checkpoint (mirrored to the artifact store), and the per-attempt
staging and torchrun work folders."""

from __future__ import annotations

from pathlib import Path

from core.artifact_store import get_store
from core.settings import Settings
from worker.checkpoints import CheckpointMirror


def checkpoint_dir(settings: Settings, job_id: str) -> Path:
    """Per job: a later attempt (on this host, or another one through the artifact store) resumes from it."""
    return settings.data_path / "checkpoints" / job_id


def checkpoint_mirror(settings: Settings, job_id: str) -> CheckpointMirror:
    return CheckpointMirror(get_store(settings), job_id, checkpoint_dir(settings, job_id))


def staging_dir(settings: Settings, job_id: str, token: str) -> Path:
    """Per attempt: a reaped-but-alive delivery and the new holder never share it."""
    return settings.data_path / "staging" / f"job-{job_id}-{token}"


def distributed_dir(settings: Settings, job_id: str, token: str) -> Path:
    """torchrun's work folder, per attempt too: each delivery empties it before and removes it after."""
    return settings.data_path / "distributed" / f"{job_id}-{token}"
