"""Upper bounds on a job's config, from Settings: no request may tie up a training worker for ever.

Checked before anything is stored or queued (POST /v1/jobs, POST /v1/policies);
the wall-clock limit per job (``job_time_limit_s``) is the worker's side.
"""

from __future__ import annotations

from typing import Any

from core.errors import InvalidInput
from core.settings import Settings

# config key -> the Settings field that caps it
BOUNDS = {
    "max_steps": "job_max_steps",
    "num_epochs": "job_max_epochs",
    "batch_size": "job_max_batch_size",
    "grad_accumulation": "job_max_grad_accumulation",
    "max_length": "job_max_length",
    "max_prompt_length": "job_max_length",
    "lora_r": "job_max_lora_r",
    "lora_alpha": "job_max_lora_alpha",
    "sequence_workers": "job_max_sequence_workers",
    "processes": "job_max_processes",
}


def check_job_config(config: Any, *, settings: Settings) -> None:
    """Raise InvalidInput naming ``config.<key>`` when a bounded value is above its cap."""
    if not isinstance(config, dict):
        return  # KTOConfig.from_dict names the type error
    for key, setting in BOUNDS.items():
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # absent, null, or a wrong type the config validation reports
        cap = getattr(settings, setting)
        if value > cap:
            reason = f"{value} exceeds this server's limit of {cap} (PROSPECT_{setting.upper()})"
            raise InvalidInput(f"config.{key}: {reason}", details=[{"field": f"config.{key}", "message": reason}])
