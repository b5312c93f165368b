"""Unit tests read only the config files they name."""

import pytest


@pytest.fixture(autouse=True)
def no_config_file_from_the_shell(monkeypatch):
    # `eval "$(kuryr-aio env)"` in the shell that runs the tests exports it.
    monkeypatch.delenv("KURYR_CONFIG_FILE", raising=False)
