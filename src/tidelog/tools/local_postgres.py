"""A throwaway PostgreSQL cluster in a directory, for tests and local runs: no systemd, no
package-managed cluster, nothing listening beyond 127.0.0.1.

`start(data_dir)` creates the cluster on first use (initdb), starts it if it is not running and
makes sure the application role and database exist; it is idempotent and returns the same dsn
each time. `stop(data_dir)` stops exactly the server of that directory (never by process name).

The directory is the PostgreSQL data directory itself; the unix socket, `server.log` and the
recorded credentials (`tidelog-postgres.json`) live in it too. PostgreSQL refuses to run as
root, so when we are root every initdb/pg_ctl/psql runs as the `postgres` OS user, which owns
the directory. That user must be able to traverse every ancestor of the directory: ancestors
it cannot traverse (pytest's 0700 `/tmp/pytest-of-root`, say) get the execute bit for it
(o+x, or u+x/g+x when it is their owner/group), never a read bit, so it can reach the known
path but list nothing. This is redone before every initdb/pg_ctl/psql run, because others may
tighten them again (every pytest session start resets `/tmp/pytest-of-root` to 0700). The
superuser `postgres` has trust auth over the socket and, over TCP, the password given to the
first `start`. Durability stays real: fsync and synchronous commit are on.

    python -m tidelog.tools.local_postgres start DIR [--port N]   # prints the dsn
    python -m tidelog.tools.local_postgres status DIR
    python -m tidelog.tools.local_postgres stop DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "LocalPostgres",
    "LocalPostgresError",
    "main",
    "pg_bin_dir",
    "start",
    "status",
    "stop",
]

HOST = "127.0.0.1"
OS_USER = "postgres"
SUPERUSER = "postgres"
CREDENTIALS_FILE = "tidelog-postgres.json"
LOG_FILE = "server.log"
DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
DEFAULT_USER = DEFAULT_PASSWORD = DEFAULT_DATABASE = "tidelog"
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
# settings for a small test cluster; durability settings are spelled out so nobody "optimises"
# them away: tests must see what production sees after a crash
TEST_SETTINGS: dict[str, str] = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "min_wal_size": "32MB",
    "max_wal_size": "256MB",
    "logging_collector": "off",
    "log_destination": "'stderr'",
}
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
INITDB_TIMEOUT = 120.0
PG_CTL_TIMEOUT = 60  # pg_ctl -t; the subprocess gets a little more
PSQL_TIMEOUT = 60.0
START_ATTEMPTS = 3  # a freshly picked port can be grabbed by someone else before we bind it


class LocalPostgresError(RuntimeError):
    """A local cluster could not be created, started, stopped or queried."""


@dataclass(frozen=True, slots=True)
class LocalPostgres:
    """A running local cluster: where it lives, where it listens and who the application is."""

    data_dir: Path
    port: int
    user: str = DEFAULT_USER
    password: str = DEFAULT_PASSWORD
    database: str = DEFAULT_DATABASE

    @property
    def dsn(self) -> str:
        """`postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE` (TCP, password auth)."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """The dsn of another database of this server, as the same user."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{HOST}:{self.port}/{quote(database, safe='')}"
        )

    def superuser_sql(self, sql: str, *, database: str = "postgres") -> str:
        """Run `sql` with psql as the `postgres` superuser over the unix socket (trust auth).

        Returns psql's unaligned, tuples-only output; raises `LocalPostgresError` on any error.
        Statements that refuse transaction blocks (CREATE DATABASE) are fine: psql sends each
        statement of the script on its own.
        """
        return _psql(self.data_dir, self.port, sql, database=database)

    def create_database(self, name: str) -> str:
        """Create an empty database owned by `user`; returns its dsn."""
        self.superuser_sql(f"CREATE DATABASE {_ident(name)} OWNER {_ident(self.user)};\n")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database if it exists, disconnecting whoever is still connected to it."""
        self.superuser_sql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE);\n")


# -- binaries and the OS user -----------------------------------------------------------------


def pg_bin_dir() -> Path:
    """Where the PostgreSQL binaries are: `$TIDELOG_PG_BIN`, else PostgreSQL 15's Debian
    directory, else the newest `/usr/lib/postgresql/*/bin`, else the directory of `pg_ctl` on
    PATH. Raises `LocalPostgresError` naming what is missing."""
    configured = os.environ.get("TIDELOG_PG_BIN")
    if configured:
        return _checked_bin_dir(Path(configured), "TIDELOG_PG_BIN")
    candidates = [DEFAULT_BIN_DIR]
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True
    )
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in REQUIRED_BINARIES):
            return candidate
    on_path = shutil.which("pg_ctl")
    if on_path:
        return _checked_bin_dir(Path(on_path).resolve().parent, "PATH")
    raise LocalPostgresError(
        "PostgreSQL binaries not found: no /usr/lib/postgresql/*/bin and no pg_ctl on PATH "
        "(install postgresql or set TIDELOG_PG_BIN)"
    )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (-1,)


def _checked_bin_dir(path: Path, origin: str) -> Path:
    missing = [name for name in REQUIRED_BINARIES if not os.access(path / name, os.X_OK)]
    if missing:
        raise LocalPostgresError(
            f"PostgreSQL binaries missing in {path} (from {origin}): {', '.join(missing)}"
        )
    return path


@dataclass(frozen=True, slots=True)
class _OsUser:
    uid: int
    gid: int
    groups: frozenset[int]


def _os_user() -> _OsUser | None:
    """The OS user to run PostgreSQL as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise LocalPostgresError(
            f"OS user {OS_USER!r} is missing; PostgreSQL refuses to run as root"
        ) from None
    groups = frozenset(os.getgrouplist(OS_USER, entry.pw_gid))
    return _OsUser(entry.pw_uid, entry.pw_gid, groups)


def _as_os_user(cmd: list[str], user: _OsUser | None) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", OS_USER, "--", *cmd]
    return ["su", "-s", "/bin/sh", OS_USER, "-c", shlex.join(cmd)]


def _run(
    cmd: list[str],
    *,
    data_dir: Path,
    timeout: float,
    input: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary on `data_dir` as the cluster's OS user, without our PG* environment.

    The ancestors of `data_dir` are made traversable right before, and once more on "Permission
    denied": someone else may tighten them meanwhile (every pytest session start resets
    `/tmp/pytest-of-root` to 0700, and sessions run concurrently).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    os_user = _os_user()
    argv = _as_os_user(cmd, os_user)
    for attempt in range(2):
        _make_reachable(data_dir, os_user)
        try:
            done = subprocess.run(
                argv, input=input, capture_output=True, text=True, timeout=timeout, env=env,
                cwd="/", check=False,
            )
        except subprocess.TimeoutExpired:
            name = Path(cmd[0]).name
            raise LocalPostgresError(f"{name} timed out after {timeout:.0f}s") from None
        except FileNotFoundError as exc:
            raise LocalPostgresError(f"cannot run {argv[0]}: {exc.strerror}") from None
        denied = "Permission denied" in done.stderr + done.stdout
        if done.returncode == 0 or not denied or os_user is None or attempt:
            break
    if check and done.returncode != 0:
        raise LocalPostgresError(
            f"{Path(cmd[0]).name} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done


# -- the directory --------------------------------------------------------------------------


def _make_reachable(path: Path, user: _OsUser | None) -> None:
    """Give the cluster's OS user the execute (search) bit on every ancestor it cannot traverse.

    Only the bit of the class it falls in (owner, group or other) is added, never read or write.
    """
    if user is None:
        return
    for ancestor in path.parents:
        if not ancestor.exists():
            continue  # created later, by us
        st = ancestor.stat()
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode & bit:
            os.chmod(ancestor, mode | bit)


def _own(path: Path, user: _OsUser | None) -> None:
    if user is not None:
        os.chown(path, user.uid, user.gid)


def _is_cluster(data_dir: Path) -> bool:
    return (data_dir / "PG_VERSION").is_file()


def _prepare(data_dir: Path) -> tuple[Path, _OsUser | None]:
    data_dir = data_dir.expanduser().resolve()
    user = _os_user()
    _make_reachable(data_dir, user)
    return data_dir, user


def _initdb(bins: Path, data_dir: Path, user: _OsUser | None) -> None:
    socket_path = data_dir / f".s.PGSQL.{65535}"
    if len(os.fsencode(socket_path)) > SOCKET_PATH_MAX:
        raise LocalPostgresError(
            f"data directory path too long for its unix socket ({socket_path}): use a shorter one"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    _make_reachable(data_dir, user)
    _own(data_dir, user)
    os.chmod(data_dir, 0o700)
    _run(
        [
            str(bins / "initdb"), "-D", str(data_dir), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
        ],
        data_dir=data_dir,
        timeout=INITDB_TIMEOUT,
    )
    settings = dict(TEST_SETTINGS)
    settings["unix_socket_directories"] = _conf_string(str(data_dir))
    _set_settings(data_dir / "postgresql.conf", settings)


# -- postgresql.conf ---------------------------------------------------------------------------


def _conf_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _setting_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(name)}\s*=\s*(.*?)\s*(#.*)?$", re.IGNORECASE)


def _set_settings(conf: Path, settings: dict[str, str]) -> None:
    """Set each setting in place (every uncommented occurrence), appending those not set yet."""
    lines = conf.read_text().splitlines()
    for name, value in settings.items():
        pattern = _setting_re(name)
        line = f"{name} = {value}  # tidelog.tools.local_postgres"
        hits = [i for i, text in enumerate(lines) if pattern.match(text)]
        for i in hits:
            lines[i] = line
        if not hits:
            lines.append(line)
    conf.write_text("\n".join(lines) + "\n")


def _get_setting(conf: Path, name: str) -> str | None:
    if not conf.is_file():
        return None
    value = None
    pattern = _setting_re(name)
    for text in conf.read_text().splitlines():
        match = pattern.match(text)
        if match:
            value = match.group(1).strip("'")
    return value


def _config_port(data_dir: Path) -> int | None:
    """The port the config asks for; `postgresql.auto.conf` (ALTER SYSTEM) wins."""
    for conf in ("postgresql.auto.conf", "postgresql.conf"):
        value = _get_setting(data_dir / conf, "port")
        if value is not None and value.isdigit():
            return int(value)
    return None


def _configure_for_start(data_dir: Path, port: int) -> None:
    socket_dir = _conf_string(str(data_dir))
    _set_settings(
        data_dir / "postgresql.conf", {"port": str(port), "unix_socket_directories": socket_dir}
    )
    auto = data_dir / "postgresql.auto.conf"
    if _get_setting(auto, "port") is not None:
        _set_settings(auto, {"port": str(port)})


# -- ports -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    """Whether PostgreSQL could listen on 127.0.0.1:port (it binds with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


# -- credentials -------------------------------------------------------------------------------


def _credentials(
    data_dir: Path, user: str | None, password: str | None, database: str | None
) -> tuple[str, str, str]:
    """Explicit values win; the rest come from the recorded file, else the defaults."""
    recorded: dict[str, str] = {}
    path = data_dir / CREDENTIALS_FILE
    with contextlib.suppress(FileNotFoundError):
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            raise LocalPostgresError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(loaded, dict):
            recorded = {k: v for k, v in loaded.items() if isinstance(v, str)}
    return (
        user if user is not None else recorded.get("user", DEFAULT_USER),
        password if password is not None else recorded.get("password", DEFAULT_PASSWORD),
        database if database is not None else recorded.get("database", DEFAULT_DATABASE),
    )


def _record_credentials(pg: LocalPostgres, os_user: _OsUser | None) -> None:
    path = pg.data_dir / CREDENTIALS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"user": pg.user, "password": pg.password, "database": pg.database}, out)
        out.write("\n")
    _own(tmp, os_user)
    os.replace(tmp, path)


# -- SQL -------------------------------------------------------------------------------------


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _psql(data_dir: Path, port: int, sql: str, *, database: str = "postgres") -> str:
    cmd = [
        str(pg_bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", str(data_dir), "-p", str(port), "-U", SUPERUSER, "-d", database,
    ]
    return _run(cmd, data_dir=data_dir, input=sql, timeout=PSQL_TIMEOUT).stdout


def _bootstrap(pg: LocalPostgres, superuser_password: str | None) -> None:
    """Create the role and its database if absent; (re)set the role's password."""
    user, password, database = _literal(pg.user), _literal(pg.password), _literal(pg.database)
    script = [
        f"SELECT format('CREATE ROLE %I', {user})"
        f" WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {user})",
        "\\gexec",
        f"ALTER ROLE {_ident(pg.user)} WITH LOGIN PASSWORD {password};",
        f"SELECT format('CREATE DATABASE %I OWNER %I', {database}, {user})"
        f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {database})",
        "\\gexec",
    ]
    if superuser_password is not None:
        script.append(f"ALTER ROLE {_ident(SUPERUSER)} PASSWORD {_literal(superuser_password)};")
    pg.superuser_sql("\n".join(script) + "\n")


# -- server ----------------------------------------------------------------------------------


def _running_port(bins: Path, data_dir: Path) -> int | None:
    """The port of the server running on `data_dir`, or None (pg_ctl status decides)."""
    if not _is_cluster(data_dir):
        return None
    done = _run(
        [str(bins / "pg_ctl"), "status", "-D", str(data_dir)],
        data_dir=data_dir, timeout=30, check=False,
    )
    if done.returncode == 3:
        return None
    if done.returncode != 0:
        raise LocalPostgresError(
            f"pg_ctl status failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
        )
    try:  # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ...
        return int((data_dir / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        port = _config_port(data_dir)
        if port is None:
            raise LocalPostgresError(f"cannot tell the port of the server on {data_dir}") from None
        return port


def _log_tail(log: Path, offset: int, lines: int = 20) -> str:
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no server.log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server.log is empty)"


def _start_server(bins: Path, data_dir: Path, port: int) -> int:
    """Start the stopped cluster, on `port` if given, else its configured port if free, else a
    free one. Returns the port it listens on."""
    log = data_dir / LOG_FILE
    for attempt in range(START_ATTEMPTS):
        if port:
            if not _port_is_free(port):
                raise LocalPostgresError(f"port {port} on {HOST} is taken")
            chosen = port
        else:
            configured = _config_port(data_dir)
            if attempt == 0 and configured is not None and _port_is_free(configured):
                chosen = configured
            else:
                chosen = _free_port()
        _configure_for_start(data_dir, chosen)
        offset = log.stat().st_size if log.exists() else 0
        done = _run(
            [
                str(bins / "pg_ctl"), "-D", str(data_dir), "-l", str(log),
                "-w", "-t", str(PG_CTL_TIMEOUT), "start",
            ],
            data_dir=data_dir,
            timeout=PG_CTL_TIMEOUT + 30,
            check=False,
        )
        if done.returncode == 0:
            return chosen
        tail = _log_tail(log, offset)
        if not port and "could not bind" in tail and attempt + 1 < START_ATTEMPTS:
            continue  # someone took the port between our check and the server's bind
        raise LocalPostgresError(
            f"PostgreSQL on {data_dir} did not start (pg_ctl exit {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()}); tail of {log}:\n{tail}"
        )
    raise AssertionError("unreachable")


# -- public API ------------------------------------------------------------------------------


def start(
    data_dir: Path,
    *,
    port: int = 0,
    user: str | None = None,
    password: str | None = None,
    database: str | None = None,
) -> LocalPostgres:
    """Make sure a cluster runs on `data_dir` and serves `database` to `user`; idempotent.

    Creates the cluster if the directory holds none (the directory may exist, empty). `port`
    0 means the cluster's configured port if free, else a free loopback port; an explicit port
    must be free, or be the one the running server already listens on. `user`, `password`
    and `database` default to what the last `start` recorded in the directory, else "tidelog".
    """
    bins = pg_bin_dir()
    data_dir, os_user = _prepare(Path(data_dir))
    user, password, database = _credentials(data_dir, user, password, database)
    bootstrapped = (data_dir / CREDENTIALS_FILE).exists()  # written after the first bootstrap
    if not _is_cluster(data_dir):
        _initdb(bins, data_dir, os_user)
    running = _running_port(bins, data_dir)
    if running is None:
        running = _start_server(bins, data_dir, port)
    elif port and port != running:
        raise LocalPostgresError(
            f"PostgreSQL on {data_dir} already runs on port {running}, not {port}"
        )
    pg = LocalPostgres(data_dir, running, user, password, database)
    _bootstrap(pg, superuser_password=None if bootstrapped else password)
    _record_credentials(pg, os_user)
    return pg


def status(data_dir: Path) -> LocalPostgres | None:
    """The cluster running on `data_dir` with its recorded credentials, or None."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not _is_cluster(data_dir):
        return None
    bins = pg_bin_dir()
    _prepare(data_dir)
    port = _running_port(bins, data_dir)
    if port is None:
        return None
    return LocalPostgres(data_dir, port, *_credentials(data_dir, None, None, None))


def stop(data_dir: Path) -> None:
    """Stop the server running on `data_dir` (fast shutdown: rolls back open transactions,
    keeps everything committed); a no-op when none runs or there is no cluster."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not _is_cluster(data_dir):
        return
    bins = pg_bin_dir()
    _prepare(data_dir)
    if _running_port(bins, data_dir) is None:
        return
    _run(
        [str(bins / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w",
         "-t", str(PG_CTL_TIMEOUT), "stop"],
        data_dir=data_dir,
        timeout=PG_CTL_TIMEOUT + 30,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tidelog.tools.local_postgres",
        description="A local PostgreSQL cluster in a directory, for tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="create/start the cluster, print its dsn")
    start_cmd.add_argument("data_dir", type=Path)
    start_cmd.add_argument("--port", type=int, default=0, help="0: configured or free port")
    start_cmd.add_argument("--user")
    start_cmd.add_argument("--password")
    start_cmd.add_argument("--database")
    for name, text in (("stop", "stop the cluster"), ("status", "print the dsn if running")):
        commands.add_parser(name, help=text).add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            pg = start(
                args.data_dir, port=args.port, user=args.user, password=args.password,
                database=args.database,
            )
            print(pg.dsn)
        elif args.command == "stop":
            stop(args.data_dir)
        else:
            running = status(args.data_dir)
            if running is None:
                print(f"not running: {args.data_dir}")
                return 3  # as pg_ctl status
            print(running.dsn)
    except LocalPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
