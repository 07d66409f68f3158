"""The local PostgreSQL cluster tool against the real binaries: each test starts its own
cluster in its pytest tmp dir (whose 0700 root-owned ancestors the tool must open up for the
`postgres` OS user), and always stops it, by data directory."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidelog.tools.local_postgres import (
    LocalPostgres,
    LocalPostgresError,
    main,
    pg_bin_dir,
    start,
    status,
    stop,
)


@pytest.fixture
def pg_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory (not created yet) whose server is stopped however the test ends."""
    data_dir = tmp_path / "pg"
    try:
        yield data_dir
    finally:
        stop(data_dir)


def psql_tcp(dsn: str, sql: str, password: str | None = None) -> str:
    """Run `sql` as a TCP client of `dsn`, password auth, from outside the tool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    done = subprocess.run(
        [str(pg_bin_dir() / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def tcp_dsn(pg: LocalPostgres, database: str | None = None) -> str:
    """The dsn without its password, so that only PGPASSWORD can authenticate."""
    return f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{database or pg.database}"


def test_start_serves_tcp_and_is_idempotent(pg_dir: Path) -> None:
    modes_before = {a: stat.S_IMODE(a.stat().st_mode) for a in pg_dir.parents}
    pg = start(pg_dir)
    assert pg.dsn == f"postgresql://tidelog:tidelog@127.0.0.1:{pg.port}/tidelog"
    assert psql_tcp(tcp_dsn(pg), "SELECT 1", password=pg.password) == "1"
    assert psql_tcp(pg.dsn, "SELECT current_user, current_database()") == "tidelog|tidelog"
    assert psql_tcp(pg.dsn, "SHOW fsync") == "on"

    assert start(pg_dir) == pg
    assert status(pg_dir) == pg
    for ancestor, before in modes_before.items():  # at most search bits were added
        added = stat.S_IMODE(ancestor.stat().st_mode) & ~before
        assert not added & ~0o111, (ancestor, oct(before), oct(added))


def test_survives_ancestors_tightened_again(pg_dir: Path, tmp_path: Path) -> None:
    """pytest resets /tmp/pytest-of-root to 0700 whenever a session starts, concurrent
    sessions included: socket and pg_ctl access must reopen the path each time."""
    pg = start(pg_dir)
    tmp_path.chmod(0o700)  # our own ancestor only: others' sessions are not disturbed
    assert pg.superuser_sql("SELECT 2") == "2\n"
    tmp_path.chmod(0o700)
    assert status(pg_dir) == pg
    tmp_path.chmod(0o700)
    stop(pg_dir)
    assert status(pg_dir) is None


def test_wrong_password_is_refused(pg_dir: Path) -> None:
    pg = start(pg_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(
        [str(pg_bin_dir() / "psql"), "-X", "-w", "-c", "SELECT 1", tcp_dsn(pg)],
        capture_output=True, text=True, timeout=30, env={**env, "PGPASSWORD": "wrong"},
        check=False,
    )
    assert done.returncode != 0
    assert "password authentication failed" in done.stderr


def test_restart_keeps_data_and_port(pg_dir: Path) -> None:
    pg = start(pg_dir, user="app", password="s3cret'\"", database="appdb")
    psql_tcp(pg.dsn, "CREATE TABLE t (v int); INSERT INTO t VALUES (41), (1)")
    stop(pg_dir)
    assert status(pg_dir) is None

    again = start(pg_dir)  # defaults: the recorded credentials, the configured port
    assert again == pg
    assert psql_tcp(again.dsn, "SELECT sum(v) FROM t") == "42"


def test_taken_port_is_replaced_on_restart(pg_dir: Path) -> None:
    pg = start(pg_dir)
    stop(pg_dir)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", pg.port))
        squatter.listen()
        moved = start(pg_dir)
    assert moved.port != pg.port
    assert psql_tcp(moved.dsn, "SELECT 1") == "1"
    stop(pg_dir)
    assert start(pg_dir).port == moved.port  # the new port was written to the config


def test_explicit_port_conflicts_are_errors(pg_dir: Path) -> None:
    pg = start(pg_dir)
    with pytest.raises(LocalPostgresError, match="already runs on port"):
        start(pg_dir, port=pg.port + 1 if pg.port < 65535 else pg.port - 1)
    assert start(pg_dir, port=pg.port) == pg


def test_stop_is_a_noop_when_not_running(pg_dir: Path) -> None:
    stop(pg_dir)  # no directory
    pg_dir.mkdir()
    stop(pg_dir)  # empty directory
    assert status(pg_dir) is None
    start(pg_dir)
    stop(pg_dir)
    stop(pg_dir)  # stopped cluster
    assert status(pg_dir) is None


def test_missing_binaries_are_named(pg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDELOG_PG_BIN", str(pg_dir / "nowhere"))
    with pytest.raises(LocalPostgresError, match=r"missing in .*nowhere.*: initdb, pg_ctl"):
        start(pg_dir)
    assert not pg_dir.exists()


def test_cli(pg_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(pg_dir)]) == 3
    capsys.readouterr()
    assert main(["start", str(pg_dir)]) == 0
    dsn = capsys.readouterr().out.strip()
    assert dsn == start(pg_dir).dsn
    assert main(["status", str(pg_dir)]) == 0
    assert capsys.readouterr().out.strip() == dsn
    assert main(["stop", str(pg_dir)]) == 0
    assert status(pg_dir) is None


def test_pg_database_is_fresh_and_owned(pg_database: str, postgres: LocalPostgres) -> None:
    assert pg_database != postgres.dsn
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert psql_tcp(pg_database, tables) == "0"
    owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
    assert psql_tcp(pg_database, owner) == postgres.user
    psql_tcp(pg_database, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
    assert psql_tcp(pg_database, "SELECT count(*) FROM t") == "1"
