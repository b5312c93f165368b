"""Where Kuryr's processes log.

Always to stderr: systemd's journal, dockerd's log for the managed plugin,
`kubectl logs` for the pods.  Also to a file when kuryr.conf says so with the
options kuryr-libnetwork's (oslo.log's) kuryr.conf already has: ``[DEFAULT]
log_file``, relative to ``log_dir`` when that is set; ``log_dir`` alone gives
``<log_dir>/<command's default name>``.  The file is reopened when logrotate
moves it (WatchedFileHandler).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from oslo_config import cfg

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(conf: cfg.ConfigOpts, default_name: str) -> Path | None:
    """The log file kuryr.conf asks for, None when it asks for none."""
    if not conf.log_file and not conf.log_dir:
        return None
    name = Path(conf.log_file or default_name)
    return name if name.is_absolute() or not conf.log_dir else Path(conf.log_dir) / name


def configure(conf: cfg.ConfigOpts, default_name: str) -> None:
    """Logging for a long-running command (``default_name``: its file's name
    under log_dir when log_file names none)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    path = log_path(conf, default_name)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.WatchedFileHandler(path))
        except OSError as exc:
            raise SystemExit(f"kuryr: cannot log to {path} ([DEFAULT] log_file/log_dir): "
                             f"{exc.strerror}") from None
    logging.basicConfig(level=logging.DEBUG if conf.debug else logging.INFO, format=FORMAT,
                        handlers=handlers, force=True)
