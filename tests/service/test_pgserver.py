"""The PostgreSQL test server: missing binaries fail the tests that need it, with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pgserver import INSTALL_HINT

ROOT = Path(__file__).resolve().parents[2]


def test_missing_server_binaries_fail_the_postgres_tests_saying_what_to_install(tmp_path: Path):
    env = {**os.environ, "SPOOKY_PG_BINDIR": str(tmp_path / "no-postgres-here")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/service/test_store.py::test_open_store_picks_the_store_by_url",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 1, out.stdout[-2000:]  # an error, not a skip or a pass
    assert "1 error" in out.stdout and "skipped" not in out.stdout
    assert INSTALL_HINT in out.stdout


def test_the_server_is_real_and_each_test_gets_an_empty_database(pg_server, pg_url: str):
    other = pg_server.database()
    assert other != pg_url
    pg_server.execute(pg_url, "CREATE TABLE t (x int)")
    assert pg_server.execute(other, "SELECT count(*) FROM pg_tables WHERE tablename = 't'") == [(0,)]
    version = pg_server.execute(pg_url, "SHOW server_version_num")[0][0]
    assert int(version) >= 150000
