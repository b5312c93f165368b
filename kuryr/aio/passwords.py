"""Per-install random passwords of the stack's database users.

Each is made once, on first use, and kept in ``Layout.secrets_dir`` (0700,
files 0600, root only): the next `up` and `down` keep it, `down --purge` wipes
it together with the databases it opens.  MariaDB and Keystone then give
their users this password at every `up` (see ``mariadb.user_statements``),
so a database made by an older kuryr-aio (fixed passwords) takes it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from kuryr.aio.layout import PRIVATE_DIR_MODE, Layout, make_dir
from kuryr.aio.procs import StackError

# token_urlsafe's alphabet: safe unquoted in a database URL and inside '...' in SQL.
PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,}")
FILE_MODE = 0o600


def generate() -> str:
    return secrets.token_urlsafe(24)


def native_password_hash(password: str) -> str:
    """What MariaDB stores for ``IDENTIFIED BY password`` (mysql_native_password)."""
    inner = hashlib.sha1(password.encode()).digest()  # noqa: S324 - MariaDB's format, not ours
    return "*" + hashlib.sha1(inner).hexdigest().upper()  # noqa: S324


def db_password(layout: Layout, user: str) -> str:
    """The password of database user ``user``; made (and kept) the first time."""
    path = layout.db_password_file(user)
    make_dir(path.parent, PRIVATE_DIR_MODE)
    if not path.exists():
        _create_once(path, generate())
    return _read(path)


def _read(path: Path) -> str:
    # A file copied or restored by hand may have lost its mode.
    path.chmod(FILE_MODE)
    password = path.read_text().strip()
    if not PASSWORD_PATTERN.fullmatch(password):
        raise StackError(f"{path} does not hold a kuryr-aio password (20 or more of "
                         "A-Z a-z 0-9 _ -); remove it and run `kuryr-aio up` to make a new one")
    return password


def _create_once(path: Path, password: str) -> None:
    """Write ``path`` unless another `up` (or `status`) did first: the file
    appears complete (a hard link to a finished temporary file) or not at all,
    so two runs never hand out different passwords."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{password}\n")
        with contextlib.suppress(FileExistsError):  # the other run's password is the one
            os.link(tmp, path)
    finally:
        tmp.unlink()
