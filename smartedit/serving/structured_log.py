"""JSON-lines logging for the Python models: one object per line, carrying the request id.

Triton's own log lines are glog text; ours go to the stub's stderr (which tritonserver passes on
to its own stderr, so ``kubectl logs`` shows both) as JSON that a log pipeline can parse without a
regex. Every line of a request carries ``request_id`` (the id the client sent; Triton hands it to
every step of the ensemble), ``model`` and ``stage``; timed stages add ``duration_ms``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from smartedit.errors import RequestError

ROOT_LOGGER = "smartedit"
NO_REQUEST_ID = "-"


class JsonLineFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ["pipeline",] ...fields}``; fields come from
    ``extra={"fields": {...}}``; ``pipeline`` is the process's (``log_pipeline``)."""

    pipeline = ""  # a model process serves one pipeline (smartedit.serving.pipelines)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if JsonLineFormatter.pipeline:
            entry["pipeline"] = JsonLineFormatter.pipeline
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def model_logger(model: str, stream=None) -> logging.Logger:
    """The logger of one Python model, writing JSON lines to stderr (configured once per process)."""
    root = logging.getLogger(ROOT_LOGGER)
    if not any(isinstance(h.formatter, JsonLineFormatter) for h in root.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonLineFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # Triton's stub has no root handler; do not print twice elsewhere
    return root.getChild(model)


def log_pipeline(pipeline: str) -> None:
    """Every later line of this process names ``pipeline`` (the one its model serves)."""
    JsonLineFormatter.pipeline = pipeline


def log_event(logger: logging.Logger, message: str, *, request_id: str | None, stage: str,
              level: int = logging.INFO, exc_info: bool = False, **fields) -> None:
    logger.log(level, message, exc_info=exc_info, extra={"fields": {
        "model": logger.name.rsplit(".", 1)[-1], "request_id": request_id or NO_REQUEST_ID, "stage": stage, **fields}})


@contextmanager
def timed_stage(logger: logging.Logger, request_id: str | None, stage: str, **fields) -> Iterator[dict]:
    """Log one line when ``stage`` ends, with ``duration_ms`` and ``outcome``.

    The body may add fields to the yielded dict (the steps it ran; ``outcome`` when it is not
    "ok"). An exception is logged once, here, as outcome "failed" with its message (and its
    traceback, unless it is a ``RequestError``: a bad request is not a server fault), then
    re-raised: the caller decides what the client sees.
    """
    started = time.perf_counter()
    fields = dict(fields, outcome="ok")
    try:
        yield fields
    except BaseException as error:
        fields.update(outcome="failed", error=str(error))
        server_fault = not isinstance(error, RequestError)
        log_event(logger, f"{stage} failed", request_id=request_id, stage=stage,
                  level=logging.ERROR if server_fault else logging.WARNING, exc_info=server_fault,
                  duration_ms=_elapsed_ms(started), **fields)
        raise
    log_event(logger, f"{stage} {fields['outcome']}", request_id=request_id, stage=stage,
              duration_ms=_elapsed_ms(started), **fields)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
