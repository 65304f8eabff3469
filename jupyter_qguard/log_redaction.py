"""No token in the server's log: every record any logger of the server process makes is
redacted as it is made, before a handler formats it.

jupyter_server scrubs the URIs of its own access log, but not the other lines that carry a
request: tornado's warning for a refused request logs `403 GET /api/...?token=qga_… (ip)`,
a retrying client wrote 10,856 of them in one run. A filter on the handlers would miss the
handlers added later (and loggers with handlers of their own); the log record factory is
the one place every record passes, whatever logger and handler it meets.

What is redacted, in the message, its arguments' text and a traceback's:
- a query parameter whose name contains token, auth, key, code, state or xsrf (the names
  jupyter_server's own access log scrubs), e.g. `?token=…`, `&access_token=…`; elsewhere in
  a line, `token=…` and `…_token=…`;
- `Authorization` values, as a header line, a dict's repr or JSON (`token …`, `Bearer …`);
- anything shaped like an agent token (`qga_…`), wherever it stands.
"""

from __future__ import annotations

import logging
import re
from typing import Any

SECRET = "[secret]"
# The parameter names jupyter_server's access log scrubs (jupyter_server/log.py).
_PARAM = re.compile(r"([?&;])([\w.-]*(?:token|auth|key|code|state|xsrf)[\w.-]*)=([^&\s\"'#<>]+)")
# Outside a query string only `…token=` is taken for a secret (`state=pending` is not one).
_TOKEN_WORD = re.compile(r"(\b)([\w.-]*token)=([^&\s\"'#<>,;]+)", re.IGNORECASE)
_AUTHORIZATION = re.compile(
    r"""(?ix)
    (authorization["']?\s*[:=]\s*["']?)   # Authorization: / 'Authorization': ' / "authorization"="
    (?:(token|bearer|basic)\s+)?          # its scheme, kept
    [^\s"',}]+
    """
)
_AGENT_TOKEN = re.compile(r"qga_[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    text = _AGENT_TOKEN.sub("qga_" + SECRET, text)
    text = _AUTHORIZATION.sub(
        lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + SECRET, text
    )
    for pattern in (_PARAM, _TOKEN_WORD):
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}={SECRET}", text)
    return text


def install() -> None:
    """Redact every log record of this process from now on (once; idempotent)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "qguard_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as it would have
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            # The formatter takes exc_text as it is when set (its own cache of the text).
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    factory.qguard_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
