"""Training on N processes: the Celery task launches ``torchrun`` and watches it.

``python -m torch.distributed.run --standalone --nproc-per-node N -m worker.train_rank DIR`` runs in a
session (process group) of its own; torchrun gives each rank a session too, so stopping signals
torchrun's group and each rank by pid (``stop_group``). The task (this
module) stays the job's only voice: it relays rank 0's progress and phases (``DIR/events.jsonl``) to
the job record, and asks ``should_stop`` (cancel, wall-clock limit, claim lost to the reaper, database
gone) every poll; when it says stop, the whole group gets SIGTERM, then SIGKILL after a grace period,
and :class:`~alignment.train.TrainingCancelled` is raised as a one-process run would. If the task's
process itself dies, each rank notices its parent is gone and kills the group (``worker.train_rank``).

The result comes back as rank 0 wrote it: the adapter is loaded onto the task's base model, so
evaluation and publishing run unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from worker.train_rank import EXIT_CHECKPOINT_MISMATCH, PARENT_ENV

log = logging.getLogger(__name__)

POLL_S = 0.5


class LaunchRefused(ValueError):
    """This worker cannot run the job on that many processes; the message says why and what to do."""


def check_devices(config) -> None:
    """One process per GPU: asking for more processes than this worker has GPUs is refused up front."""
    import torch

    if config.device in ("auto", "cuda") and torch.cuda.is_available() and config.processes > torch.cuda.device_count():
        raise LaunchRefused(f"config.processes={config.processes} but this worker has {torch.cuda.device_count()} "
                            "GPU(s) (one process per GPU): lower processes, or run the job on a larger worker")
STOP_GRACE_S = 10.0


def torchrun_command(work: Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "worker.train_rank", str(work)]


def _rank_pids(work: Path) -> list[int]:
    pids = []
    for f in (work / "ranks").glob("*.pid"):
        pid = int(f.read_text() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline")
        # Only a process that still is one of our ranks (a pid may have been reused since).
        if pid and cmdline.exists() and str(work).encode() in cmdline.read_bytes():
            pids.append(pid)
    return pids


def stop_group(proc: subprocess.Popen, work: Path, grace_s: float = STOP_GRACE_S) -> None:
    """Stop torchrun and every rank: SIGTERM to torchrun's process group (torchrun passes it on to its
    ranks), SIGKILL to whatever is left after ``grace_s``. torchrun starts each rank in a session of
    its own, so the ranks are also signalled by pid (``ranks/*.pid``)."""
    def signal_all(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for pid in _rank_pids(work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    if proc.poll() is None:
        signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (proc.poll() is None or _rank_pids(work)) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_all(signal.SIGKILL)
    proc.wait()


class _Tail:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> Iterable[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        *done, self.partial = (self.partial + chunk).split(b"\n")
        return [json.loads(line) for line in done if line]


def _failure(work: Path) -> str:
    """The first rank's exception (the others often only fail because it left the collective), else the
    end of torchrun's log."""
    errors = sorted((work / "errors").glob("*.txt"), key=lambda f: f.stat().st_mtime_ns)
    if errors:
        others = f" ({len(errors) - 1} other rank(s) failed after it)" if len(errors) > 1 else ""
        return errors[0].read_text(errors="replace")[:2000] + others
    return (work / "torchrun.log").read_text(errors="replace")[-2000:]


def train_in_processes(model, tokenizer, rows: Iterable[dict], config, *, base_path: str, work: Path,
                       checkpoint_dir: Path | None, should_stop: Callable[[], bool],
                       on_progress: Callable[[int, int, dict], None] | None = None,
                       on_phase: Callable[[str], None] | None = None,
                       on_checkpoint: Callable[[Path], None] | None = None):
    """train_kto's contract (a TrainResult, or TrainingCancelled / CheckpointMismatch) on
    ``config.processes`` processes. ``model`` is the base the adapter is loaded onto afterwards.
    The work folder is removed afterwards, whatever happened."""
    check_devices(config)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        return _launch(model, rows, config, work=work, base_path=base_path, checkpoint_dir=checkpoint_dir,
                       should_stop=should_stop, on_progress=on_progress, on_phase=on_phase,
                       on_checkpoint=on_checkpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # it holds a copy of the training rows


def _launch(model, rows, config, *, work: Path, base_path: str, checkpoint_dir: Path | None,
            should_stop: Callable[[], bool], on_progress, on_phase, on_checkpoint):
    from peft import PeftModel

    from alignment.train import CheckpointMismatch, TrainingCancelled, TrainResult
    from alignment.weights import ClassWeights

    with open(work / "rows.jsonl", "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    (work / "spec.json").write_text(json.dumps({
        "base_path": base_path, "config": config.to_dict(),
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None}))
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    with open(work / "torchrun.log", "ab") as out:
        proc = subprocess.Popen(torchrun_command(work, config.processes), env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    log.info("training on %d processes (torchrun pid %d, log %s)", config.processes, proc.pid,
             work / "torchrun.log")
    events, step, mismatch = _Tail(work / "events.jsonl"), 0, None
    try:
        while True:
            finished = proc.poll() is not None
            for event in events.lines():
                if "progress" in event:
                    step = event["progress"][0]
                    if on_progress is not None:
                        on_progress(*event["progress"])
                elif "phase" in event and on_phase is not None:
                    on_phase(event["phase"])
                elif "checkpoint" in event and on_checkpoint is not None:
                    on_checkpoint(Path(event["checkpoint"]))  # rank 0 wrote it (atomically): copy it to the store
                elif "checkpoint_mismatch" in event:
                    mismatch = event["checkpoint_mismatch"]
            if finished:
                break
            if should_stop():
                log.info("stopping the %d training processes after step %d", config.processes, step)
                stop_group(proc, work)
                raise TrainingCancelled(step)
            time.sleep(POLL_S)
    except BaseException:
        stop_group(proc, work)  # a relay that fails (database down) must not leave ranks running
        raise
    stop_group(proc, work, grace_s=0)  # torchrun exited: nothing of the group may outlive it
    if proc.returncode == EXIT_CHECKPOINT_MISMATCH and mismatch:
        raise CheckpointMismatch(mismatch)
    if proc.returncode != 0 or not (work / "result.json").exists():
        raise RuntimeError(f"training on {config.processes} processes failed (exit {proc.returncode}): "
                           f"{_failure(work)}")
    result = json.loads((work / "result.json").read_text())
    trained = PeftModel.from_pretrained(model, work / "adapter")
    trained.eval()
    return TrainResult(model=trained, history=result["history"], metrics=result["metrics"],
                       weights=ClassWeights(**result["weights"]), config=config,
                       target_modules=result["target_modules"])
