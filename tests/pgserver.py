"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on a free loopback port.

The server binaries come from Debian's `postgresql` package (scripts/setup-postgres.sh installs
it; `.ci/run` calls that). initdb refuses to run as root, so as root the server runs as the
`postgres` user that the package creates, in a folder that user owns.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg
from support import free_port

INSTALL_HINT = (
    "the PostgreSQL tests need the server binaries (initdb, pg_ctl): install Debian's `postgresql` "
    "package (scripts/setup-postgres.sh does it: apt-get update && apt-get install -y postgresql)"
)
SUPERUSER = "spooky"


class PostgresMissingError(RuntimeError):
    """No initdb/pg_ctl on this machine (or no `postgres` user to run them as root)."""


def _major(bindir: str) -> int:
    name = Path(bindir).parent.name
    return int(name) if name.isdigit() else 0


def server_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: SPOOKY_PG_BINDIR (then only it), pg_config --bindir,
    PATH, or Debian's /usr/lib/postgresql/<major>/bin."""
    forced = os.environ.get("SPOOKY_PG_BINDIR")
    candidates = [forced] if forced else _found_bindirs()
    for folder in candidates:
        if all(os.access(Path(folder, name), os.X_OK) for name in ("initdb", "pg_ctl")):
            return Path(folder)
    return None


def _found_bindirs() -> list[str]:
    found: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            found.append(out.stdout.strip())
    on_path = shutil.which("initdb")
    if on_path:
        found.append(str(Path(on_path).resolve().parent))
    # Debian keeps the server binaries off PATH, one folder per major version: newest first.
    return found + sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)


class PgServer:
    """One throw-away cluster; `database()` hands out a fresh, empty database per test."""

    def __init__(self) -> None:
        bindir = server_bindir()
        if bindir is None:
            raise PostgresMissingError(INSTALL_HINT)
        self.bindir = bindir
        self._as: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresMissingError(
                    f"running as root, but there is no `postgres` user to run the server as; {INSTALL_HINT}"
                ) from e
            self._as = ["runuser", "-u", "postgres", "--"]
        # Under /tmp (not pytest's 0700 tmp folder) so that the postgres user can reach it.
        self.root = Path(tempfile.mkdtemp(prefix="spooky-pg-"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._as, str(self.bindir / tool), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if out.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr.strip()}\n{log}")

    def start(self, port: int | None = None) -> None:
        """Start on `port`, or on a free one (a port taken between the probe and the bind is retried)."""
        tries = 1 if port else 3
        for attempt in range(tries):
            self.port = port or free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
                # Test speed only: the code path of a commit is the same, the disk flush is skipped.
                " -c fsync=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                return
            except RuntimeError:
                if attempt == tries - 1:
                    raise

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop the server (ending every connection) and start it again on the same port."""
        self.stop("fast")
        self.start(self.port)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def execute(self, url: str, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        """Run one statement on the database at `url` (tests inspect or tamper with it)."""
        with psycopg.connect(url, autocommit=True) as con:
            cur = con.execute(sql, args)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        try:
            if self.port:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
