"""The gateway's own engine on the index: a connection pool as large as its worker threads.

Every index query of the gateway runs in one of its `WORKER_THREADS` worker threads
(threads.py), and each thread holds at most one connection at a time. SQLAlchemy's default pool
keeps 5 connections and opens up to 10 more when needed, closing them again when
returned: under load the gateway opened and closed connections per request (on
SQLite each with its PRAGMAs), and threads past the 15th waited for one. So the
gateway keeps one connection per worker thread, plus a few for the metadata
preparer and other callers outside those threads.

On SQLite each gateway connection keeps a page cache of `SQLITE_CACHE_KIB`, not the
index's 64 MB: forty connections each filling 64 MB took the gateway from 200 to 500 MB
RSS in 30 s of searches on a 1M-instance index, with no gain in speed, since the
operating system's page cache holds the file once for all of them.
"""

from __future__ import annotations

from sqlalchemy import Engine

from vna.index.engine import Pooling, create

#: Worker threads of the gateway (threads.py), and the connections kept.
WORKER_THREADS = 40
#: Connections beyond those, for threads outside them (the metadata preparer).
EXTRA_CONNECTIONS = 8
#: Page cache of each gateway connection to a SQLite index.
SQLITE_CACHE_KIB = 2048


def gateway_engine(index: Engine) -> Engine:
    """An engine on the same (migrated) index as `index`, pooling WORKER_THREADS connections.

    An in-memory SQLite index exists only inside `index`'s connections: it is returned as is.
    """
    url = index.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return index
    return create(
        url.render_as_string(hide_password=False),
        Pooling(WORKER_THREADS, EXTRA_CONNECTIONS, SQLITE_CACHE_KIB),
    )
