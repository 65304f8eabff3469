"""A logging handler that keeps what it is given, for an in-process server's start log. Put on
an application's logger with its `logging_config` (traitlets configures the app's logger with
dictConfig at start, which drops handlers added to it before):

    {"QGuardApp": {"logging_config": LOGGING_CONFIG}}
"""

from __future__ import annotations

import logging

# Every record kept since the last clear(): (level, message, logger name).
RECORDS: list[tuple[int, str, str]] = []


class Kept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        RECORDS.append((record.levelno, record.getMessage(), record.name))


def clear() -> None:
    RECORDS.clear()


def messages(level: int) -> list[str]:
    return [message for lvl, message, _ in RECORDS if lvl == level]


def logging_config(logger: str) -> dict:
    """The `logging_config` of an application whose logger is `logger` (its class name): its
    console handler, and this one."""
    return {
        "handlers": {"kept": {"class": f"{__name__}.Kept", "level": "DEBUG"}},
        "loggers": {logger: {"handlers": ["console", "kept"]}},
    }
