"""Logging set up once at the CLI entry: plain text for people, or one JSON object per line.

JSON is chosen with `spooky --log-json …` or `SPOOKY_LOG_FORMAT=json` (the variable also reaches
the children of `spooky up`). Fields passed with `extra={...}` (job id, stage, duration…) become
keys of the JSON object, so a log shipper can index the per-job line without parsing text.
"""

from __future__ import annotations

import json
import logging
import os
import time

ENV_LOG_FORMAT = "SPOOKY_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the `extra` fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def wants_json(flag: bool, env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return flag or env.get(ENV_LOG_FORMAT, "").strip().lower() == "json"


def configure_logging(*, verbose: bool = False, json_lines: bool = False) -> None:
    """Configure the root logger; like basicConfig, a no-op when it already has handlers (tests)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
