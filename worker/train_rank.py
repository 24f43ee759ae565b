"""One process of a data-parallel training run: ``python -m torch.distributed.run ... -m worker.train_rank DIR``.

``DIR`` (written by ``worker.train_launch``) holds ``spec.json`` (base model folder, config, checkpoint
folder) and ``rows.jsonl``. Every process trains its shards (``alignment.distributed``); only rank 0
reports (``events.jsonl``: one JSON object a line, read by the launcher), writes checkpoints, and
writes the result (``adapter/`` and ``result.json``). No process touches the database.

A rank whose torchrun or launching task (``PROSPECT_TRAIN_PARENT_PID``) is gone kills itself: a
worker killed with -9 leaves no ranks training behind it. Each rank writes its pid to ``ranks/``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("prospect.train_rank")

EXIT_CHECKPOINT_MISMATCH = 3
PARENT_ENV = "PROSPECT_TRAIN_PARENT_PID"


def _watch_parents(task_pid: int | None, interval_s: float = 1.0) -> None:
    """Die when torchrun (our parent; it starts each rank in a session of its own, so a signal to its
    group does not reach us) or the launching task is gone."""
    launcher = os.getppid()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    def run() -> None:
        while True:
            if os.getppid() != launcher or (task_pid is not None and gone(task_pid)):
                log.error("torchrun or the launching worker is gone; this rank stops")
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval_s)

    threading.Thread(target=run, name="parent-watch", daemon=True).start()


class Events:
    """Rank 0's reports, appended a line at a time (flushed: the launcher tails the file)."""

    def __init__(self, path: Path | None):
        self.fh = open(path, "a") if path is not None else None  # noqa: SIM115 - lives as long as the run

    def emit(self, **event) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(event) + "\n")
            self.fh.flush()


def main(work: Path) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.config import KTOConfig
    from alignment.distributed import World
    from alignment.train import CheckpointMismatch, train_kto

    _watch_parents(int(os.environ[PARENT_ENV]) if os.environ.get(PARENT_ENV) else None)
    (work / "ranks").mkdir(exist_ok=True)
    (work / "ranks" / f"{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
    world = World.from_env()
    spec = json.loads((work / "spec.json").read_text())
    config = KTOConfig.from_dict(spec["config"])
    if torch.cuda.is_available() and config.device in ("auto", "cuda"):  # one GPU per process
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        config = KTOConfig.from_dict({"device": f"cuda:{local}"}, base=config)
    events = Events(work / "events.jsonl" if world.is_main else None)
    tokenizer = AutoTokenizer.from_pretrained(spec["base_path"])
    model = AutoModelForCausalLM.from_pretrained(spec["base_path"], dtype=torch.float32, use_safetensors=True)
    rows = [json.loads(line) for line in (work / "rows.jsonl").read_text().splitlines() if line]
    try:
        result = train_kto(model, tokenizer, rows, config, world=world, resume=True,
                           checkpoint_dir=spec.get("checkpoint_dir"),
                           on_progress=lambda step, total, metrics: events.emit(progress=[step, total, metrics]),
                           on_phase=lambda phase: events.emit(phase=phase),
                           on_checkpoint=lambda file: events.emit(checkpoint=str(file)))
    except CheckpointMismatch as exc:
        events.emit(checkpoint_mismatch=str(exc))
        return EXIT_CHECKPOINT_MISMATCH
    if world.is_main:
        result.model.save_pretrained(work / "adapter")
        tmp = work / "result.json.tmp"
        tmp.write_text(json.dumps({"history": result.history, "metrics": result.metrics,
                                   "weights": result.weights.to_dict(), "target_modules": result.target_modules}))
        os.replace(tmp, work / "result.json")
    world.barrier()
    if world.size > 1:
        torch.distributed.destroy_process_group()
    return 0


def record_error(work: Path, exc: BaseException) -> None:
    """``errors/<rank>.txt``: what the launcher puts in the job's error (torchrun's own log ends in a
    summary that does not say what went wrong)."""
    (work / "errors").mkdir(exist_ok=True)
    tmp = work / "errors" / f".{os.getpid()}.tmp"
    tmp.write_text(f"rank {os.environ.get('RANK', '0')}: {type(exc).__name__}: {exc}")
    os.replace(tmp, work / "errors" / f"{os.environ.get('RANK', '0')}.txt")


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("PROSPECT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s rank" + os.environ.get("RANK", "0") + " %(levelname)s %(name)s %(message)s")
    try:
        code = main(Path(sys.argv[1]))
    except Exception as exc:
        record_error(Path(sys.argv[1]), exc)
        raise
    sys.exit(code)
