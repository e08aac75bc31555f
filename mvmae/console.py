"""How mvmae's log records read on a console: ``level: message`` lines (the CLI's and the
worker processes' alike; no click here, so that workers need not import it)."""

from __future__ import annotations

import logging


class LevelFormatter(logging.Formatter):
    """``warning: clip.mp4: 3 of 48 frames lost`` (the level lower-cased, then the message)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"
