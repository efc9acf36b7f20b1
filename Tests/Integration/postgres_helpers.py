"""PostgreSQL for the end-to-end suite: the shared test server and private servers a test may stop.

* ``postgres_server`` (session): the server ``make test`` started (``IOTGW_TEST_POSTGRES_URL``), or, when
  the variable is unset, a private one this session starts with ``Tests/Support/postgres.sh`` and stops
  at the end. Skips when no PostgreSQL server binaries are installed.
* ``postgres_db``: a fresh database on that server for one test (dropped afterwards);
  ``.storage_config()`` is the gateway's ``storage`` section for it, ``.query()`` reads rows back.
* ``private_postgres``: a server of the test's own (so the test may stop and start it), with the same
  interface plus ``stop()`` / ``start()``.

Rows are read with psycopg2 (``psycopg2-binary`` from PyPI; ``make test`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO / "Tests" / "Support" / "postgres.sh"


def _psycopg2():
    try:
        import psycopg2
        import psycopg2.extras
    except ImportError:
        pytest.fail("psycopg2 is missing: pip install psycopg2-binary (make test installs it)", pytrace=False)
    return psycopg2


class PostgresServer:
    """Where a PostgreSQL server listens and how to log in."""

    def __init__(self, url: str, directory: Path | None = None):
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 5432
        self.user = u.username or "iotgw"
        self.password = u.password or ""
        self.dbname = (u.path or "/").lstrip("/") or "postgres"
        #: The server's directory when this process started it (postgres.sh start DIR), else None.
        self.directory = directory

    @classmethod
    def start_private(cls) -> "PostgresServer":
        """initdb and start a server in a new directory under /tmp (readable by the postgres user when
        we are root; pytest's own tmp dirs are not)."""
        if not _server_binaries_installed():
            pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql")
        directory = Path(tempfile.mkdtemp(prefix="iotgw-pytest-postgres-"))
        r = subprocess.run([str(POSTGRES_SH), "start", str(directory)], capture_output=True, text=True, timeout=90)
        if r.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise AssertionError(f"postgres.sh start failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        url = next(line.split("=", 1)[1] for line in r.stdout.splitlines()
                   if line.startswith("export IOTGW_TEST_POSTGRES_URL="))
        return cls(url, directory)

    def connect(self, dbname: str | None = None, autocommit: bool = True):
        psycopg2 = _psycopg2()
        con = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=dbname or self.dbname, connect_timeout=5,
                               application_name="iotgw-pytest")
        con.autocommit = autocommit
        return con

    def stop(self) -> None:
        """pg_ctl stop -m fast (private servers only)."""
        assert self.directory is not None, "not a server this test started"
        subprocess.run([str(POSTGRES_SH), "stop", str(self.directory)], check=True, timeout=60)

    def start(self) -> None:
        """Starts a stopped private server again on the same port."""
        assert self.directory is not None, "not a server this test started"
        subprocess.run([str(POSTGRES_SH), "restart", str(self.directory)], check=True, timeout=60)

    def destroy(self) -> None:
        if self.directory is not None:
            subprocess.run([str(POSTGRES_SH), "stop", str(self.directory)], timeout=60)
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def log_tail(self, lines: int = 30) -> str:
        if self.directory is None:
            return "(shared server: no log here)"
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


class PostgresDatabase:
    """One database on a server, for one test."""

    def __init__(self, server: PostgresServer, name: str):
        self.server = server
        self.name = name

    def storage_config(self, **postgres) -> dict:
        """The gateway's ``storage`` keys for this database."""
        return {"backend": "postgres", "postgres": {
            "host": self.server.host, "port": self.server.port, "user": self.server.user,
            "password": self.server.password, "database": self.name, "connect_timeout": 5, **postgres}}

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        """One read query (``?`` placeholders, as with sqlite3) on a fresh connection; rows as dicts."""
        psycopg2 = _psycopg2()
        con = self.server.connect(self.name)
        try:
            with con.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql.replace("%", "%%").replace("?", "%s"), params)
                return [dict(r) for r in cur.fetchall()]
        finally:
            con.close()


def create_database(server: PostgresServer) -> PostgresDatabase:
    name = "iotgw_py_" + uuid.uuid4().hex[:16]
    con = server.connect()
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        con.close()
    return PostgresDatabase(server, name)


def drop_database(db: PostgresDatabase) -> None:
    con = db.server.connect()
    try:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")
    finally:
        con.close()


def _server_binaries_installed() -> bool:
    if shutil.which("pg_config"):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if bindir and os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return True
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb") is not None


@pytest.fixture(scope="session")
def postgres_server():
    url = os.environ.get("IOTGW_TEST_POSTGRES_URL")
    if url:
        yield PostgresServer(url)
        return
    server = PostgresServer.start_private()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_db(postgres_server):
    db = create_database(postgres_server)
    try:
        yield db
    finally:
        drop_database(db)


@pytest.fixture
def private_postgres():
    server = PostgresServer.start_private()
    try:
        yield PostgresDatabase(server, server.dbname)
    finally:
        server.destroy()
