"""A real Milvus standalone server from PyPI's ``milvus`` package, on loopback, stopped by its process id.

Used by the store tests (the ``milvus_uri`` fixture) and ``benchmarks/vector_stores.py``. The package's
wrapper binds the first non-loopback address unless its config says ``ip: 127.0.0.1`` (set here, in
this server's own copy of the template), and the server ignores SIGTERM for over a minute: it is
stopped with SIGKILL, which it survives as a database (its data is flushed to its folder as it goes).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def milvus_server(data: Path) -> Iterator[str]:
    """Start a Milvus standalone server keeping its data in ``data``; yield its uri; kill it."""
    from milvus import MilvusServer, MilvusServerConfig

    config = MilvusServerConfig()
    config.template_text = re.sub(r"^(\s*)ip:\s*#.*$", r"\1ip: 127.0.0.1", config.template_text, flags=re.M)
    config.parse_template()
    server = MilvusServer(config)
    server.set_base_dir(str(data))
    try:
        server.start()  # waits for its health check, up to 3 minutes
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        process = server.server_proc
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            server.server_proc = None
        server.stop()  # closes its log files
