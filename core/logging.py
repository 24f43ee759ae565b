"""One logging format for the API, the worker and the CLI."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries that log every request or plugin at INFO: useful when debugging them, noise otherwise.
CHATTY_LOGGERS = ("httpx", "httpcore", "alembic.runtime.plugins")


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    else:
        root.setLevel(level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
