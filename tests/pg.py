"""A real PostgreSQL server for the tests: initdb in a fresh temporary directory, listening on loopback
on a free port, stopped (and its directory removed) at the end of the session. Nothing is mocked.

PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the `postgres` system
user (`runuser`), which owns the data directory. `make tools` installs the distribution's server when
`initdb` is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

SUPERUSER = "keeper"


def pg_bin(name: str) -> str:
    """The newest installed server's binary (Debian keeps them off PATH, under /usr/lib/postgresql)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(f"no PostgreSQL server ({name}): run `make tools` to install it")
    return on_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="perp-keeper-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # the server refuses root: run it as the postgres system user
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "--no-sync")
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
            "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=200",
            "start",
        )  # fmt: skip

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:1])} failed: {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database for one test."""
    return pg_server.new_database()


def replica_url(url: str, role: str) -> str:
    """`url` as its own database role (created, a trust-authenticated superuser): each replica's
    backends are then found in `pg_stat_activity` by user name, and it alone can be cut off."""
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    return url.replace(f"{SUPERUSER}@", f"{role}@", 1)


def cut_off(url: str, role: str) -> int:
    """The replica of `role` loses the database: its backends are terminated (`pg_terminate_backend`)
    and it may not connect again until `restore`. How many backends were terminated."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} NOLOGIN")
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def restore(url: str, role: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} LOGIN")
