"""Log set-up shared by every process, so ingress and workers log in one shape."""

from __future__ import annotations

import logging

#: One line per event: time, level, process, logger, message.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger once per process."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
