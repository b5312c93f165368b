"""[DEFAULT] log_file / log_dir: kuryr-libnetwork's logging options still work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kuryr import config, logs


def _conf(tmp_path: Path, text: str):
    path = tmp_path / "kuryr.conf"
    path.write_text(f"[DEFAULT]\n{text}\n")
    return config.load(["--config-file", str(path)])


def test_no_option_no_file(tmp_path):
    assert logs.log_path(_conf(tmp_path, ""), "kuryr.log") is None


@pytest.mark.parametrize(("options", "expected"), [
    ("log_dir = /var/log/kuryr\nlog_file = kuryr.log", "/var/log/kuryr/kuryr.log"),
    ("log_dir = /var/log/kuryr", "/var/log/kuryr/kuryr-cni-daemon.log"),
    ("log_file = /srv/k.log", "/srv/k.log"),
    ("log_dir = /var/log/kuryr\nlog_file = /srv/k.log", "/srv/k.log"),
])
def test_the_file_is_where_oslo_log_would_put_it(tmp_path, options, expected):
    assert logs.log_path(_conf(tmp_path, options), "kuryr-cni-daemon.log") == Path(expected)


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    yield root
    for handler in root.handlers:
        if handler not in before[0]:
            handler.close()
    root.handlers[:] = before[0]
    root.setLevel(before[1])


def test_lines_go_to_the_file_too(tmp_path, root_logger):
    conf = _conf(tmp_path, f"log_dir = {tmp_path / 'logs'}\ndebug = true")
    logs.configure(conf, "kuryr.log")
    logging.getLogger("kuryr.test").debug("a line for the file")
    for handler in root_logger.handlers:
        handler.flush()
    assert "a line for the file" in (tmp_path / "logs" / "kuryr.log").read_text()


def test_an_unwritable_log_file_stops_with_the_options_named(tmp_path, root_logger):
    blocker = tmp_path / "file"
    blocker.write_text("")
    conf = _conf(tmp_path, f"log_file = {blocker / 'kuryr.log'}")
    with pytest.raises(SystemExit, match=r"log_file/log_dir"):
        logs.configure(conf, "kuryr.log")
