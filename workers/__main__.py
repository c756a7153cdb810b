"""``python -m workers workers.tasks [dramatiq's options]``: ``dramatiq`` itself, its main process
logging like every mjhook process (``MJHOOK_LOG_FORMAT``, ``MJHOOK_LOG_LEVEL``).

``dramatiq workers.tasks`` (the contract's command, which still works) leaves the main process
in dramatiq's own text format: under ``MJHOOK_LOG_FORMAT=json`` its few lines (booting, signals,
"worker exited unexpectedly") would be the only ones a JSON log pipeline cannot read, the crash
line among them. The worker processes configure their logging when they import ``workers.tasks``;
both skip dramatiq's ``logging.basicConfig`` here. docker compose and ``make up`` start the
workers this way."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from dramatiq.cli import main as dramatiq_main
from dramatiq.cli import make_argument_parser

from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run dramatiq with ``argv`` (default: this command's arguments); its exit code."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    arguments = [*(sys.argv[1:] if argv is None else argv), "--skip-logging"]
    parsed = make_argument_parser().parse_args(arguments)  # type: ignore[no-untyped-call]
    return int(dramatiq_main(parsed) or 0)  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    sys.exit(main())
