"""`kuryr-cni-install`: put kuryr-cni and its network configuration on a node.

The runtime runs the plugin from its CNI bin directory with the host's own
Python, outside any virtualenv or container image: so what is installed is
one self-contained file, a zip application of the plugin's modules (standard
library only, as kuryr-cni itself) behind a `#!/usr/bin/python3` line.  The
DaemonSet's init container runs this; so does kuryr-aio.  Both files are
written to a temporary name and renamed, so a runtime never runs or reads a
half-written one.  Standard library only (the plugin's rule).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import marshal
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # kuryr/
# What the plugin imports, and nothing else (a unit test runs the result).
MODULES = ("__init__.py", "localhttp.py", "cni/__init__.py", "cni/main.py",
           "cni/protocol.py", "cni/wire.py")
MAIN = "from kuryr.cni.main import main\nraise SystemExit(main())\n"
INTERPRETER = "/usr/bin/python3"
CONFLIST_NAME = "10-kuryr.conflist"


def plugin_bytes(interpreter: str = INTERPRETER) -> bytes:
    """The plugin as one executable zip application.

    A runtime starts it once per CNI call, 50 times for a burst of 50 pods, on
    the CPU the pods need: so the interpreter runs isolated and without the
    site module (``-IS``: no .pth files, user site or PYTHON* variables; 40 ms
    of start-up here without), and each module comes compiled as well as in
    source (zipimport cannot cache bytecode: it compiled every module on every
    call).  The bytecode is this Python's: another version falls back to the
    source."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in MODULES:
            source = (PACKAGE / name).read_bytes()
            zf.writestr(_entry(f"kuryr/{name}"), source)
            zf.writestr(_entry(f"kuryr/{name}c"), _bytecode(source, f"kuryr/{name}"))
        zf.writestr(_entry("__main__.py"), MAIN)
    return f"#!{interpreter} -IS\n".encode() + buf.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    # A fixed date: the same sources give the same bytes (no rewrite churn).
    return zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))


def _bytecode(source: bytes, path: str) -> bytes:
    """A .pyc that is used as it is: hash-based and unchecked (PEP 552), since
    zipimport would otherwise compare it with the source on every call."""
    code = compile(source, path, "exec", dont_inherit=True)
    unchecked_hash_based = (0b01).to_bytes(4, "little")
    return (importlib.util.MAGIC_NUMBER + unchecked_hash_based
            + importlib.util.source_hash(source) + marshal.dumps(code))


def conflist(socket: str, name: str = "kuryr") -> dict:
    """cniVersion 0.4.0: what every runtime here speaks (containerd 1.6: up to 1.0.0)."""
    return {"cniVersion": "0.4.0", "name": name,
            "plugins": [{"type": "kuryr-cni", "daemon_socket": socket}]}


def write_atomically(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` unless ``path`` already holds it; True when written."""
    try:
        if path.read_bytes() == data and path.stat().st_mode & 0o777 == mode:
            return False
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def install(bin_dir: Path, conf_dir: Path, socket: str,
            interpreter: str = INTERPRETER) -> list[Path]:
    """Install the plugin and its conflist; the paths written (none when current)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    written = []
    plugin = bin_dir / "kuryr-cni"
    if write_atomically(plugin, plugin_bytes(interpreter), 0o755):
        written.append(plugin)
    conf = conf_dir / CONFLIST_NAME
    text = json.dumps(conflist(socket), indent=1) + "\n"
    if write_atomically(conf, text.encode(), 0o644):
        written.append(conf)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kuryr-cni-install", description=__doc__.split("\n")[0])
    p.add_argument("--bin-dir", type=Path, default=Path("/opt/cni/bin"))
    p.add_argument("--conf-dir", type=Path, default=Path("/etc/cni/net.d"))
    p.add_argument("--socket", default="/run/kuryr/cni.sock",
                   help="the node daemon's socket ([kubernetes] daemon_socket)")
    p.add_argument("--interpreter", default=INTERPRETER,
                   help="the host's Python (3.11 or later) that runs the plugin")
    args = p.parse_args(argv)
    if not Path(args.socket).is_absolute():
        p.error(f"--socket {args.socket} is not an absolute path")
    for path in install(args.bin_dir, args.conf_dir, args.socket, args.interpreter):
        print(f"kuryr-cni-install: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
