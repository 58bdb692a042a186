"""Log set-up for the daemon: plain lines for a terminal, or one JSON object per line for
journald/ELK. Fields passed as `extra={"fields": {...}}` become JSON keys (or key=value).

Under systemd, stderr is the journal (JOURNAL_STREAM names its device and inode): every
line then starts with its syslog priority (`<3>` error ... `<7>` debug, sd-daemon(3)), which
journald takes as the entry's priority and strips, so `journalctl -p err -u bpfsync` shows
the errors. Anywhere else lines are left as they are.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# sd-daemon(3) prefixes: syslog priorities by logging level
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
              logging.DEBUG: 7}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


class JournalFormatter(logging.Formatter):
    """Another formatter's lines, each with the record's syslog priority in front."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITIES.get(record.levelno, 6 if record.levelno < 30 else 3)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def stderr_is_journal(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """JOURNAL_STREAM ("DEVICE:INODE", set by systemd for a unit whose output goes to the
    journal) names the file stderr is: not merely inherited by a child whose stderr was
    redirected elsewhere."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


def setup(fmt: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(JournalFormatter(formatter) if stderr_is_journal() else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("watchdog").setLevel(logging.WARNING)
