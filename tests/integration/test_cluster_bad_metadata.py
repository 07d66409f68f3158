"""A broker given a `metadata.uri` it cannot use exits at once with one clear line (exit
code 2), never a traceback: unreachable, a wrong password, a schema from a newer version."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tidelog.tools.local_postgres import LocalPostgres


def run_broker(tmp_path: Path, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidelog.cli", "server", "--set", f"metadata.uri={uri}",
         "--set", "listeners=PLAINTEXT://127.0.0.1:0", "--set", "metrics.enabled=false",
         "--set", f"wal.uri=file://{tmp_path}/wal", "--set", f"objectstore.uri=file://{tmp_path}/o",
         "--set", "wal.capacity=16777216"],
        capture_output=True, text=True, timeout=60)


def one_line(out: subprocess.CompletedProcess[str], expected: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in out.stderr, lines


def test_unreachable(tmp_path: Path) -> None:
    one_line(run_broker(tmp_path, "postgresql://u:secret@127.0.0.1:1/db"), "cannot connect")


def test_wrong_password(tmp_path: Path, postgres: LocalPostgres) -> None:
    uri = f"postgresql://{postgres.user}:s3cr3t@127.0.0.1:{postgres.port}/{postgres.database}"
    out = run_broker(tmp_path, uri)
    one_line(out, "authentication failed")
    assert "s3cr3t" not in out.stderr


@pytest.mark.parametrize("version", [99])
def test_newer_schema(tmp_path: Path, pg_database: str, version: int) -> None:
    async def written_by_a_newer_tidelog() -> None:
        conn = await asyncpg.connect(pg_database)
        try:
            await conn.execute("CREATE TABLE tidelog_schema (id int PRIMARY KEY, version int)")
            await conn.execute("INSERT INTO tidelog_schema VALUES (1, $1)", version)
        finally:
            await conn.close()

    asyncio.run(written_by_a_newer_tidelog())
    one_line(run_broker(tmp_path, pg_database), f"schema version {version} was written by a newer")
