"""A real PostgreSQL for the tests: Debian's package (installed with apt-get when missing, as
root), a throwaway cluster in a temporary directory, listening on 127.0.0.1 only, trust auth
(nothing but the test's loopback can reach it), stopped at the end of the session."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from support.jupyter_proc import free_port
from support.one_at_a_time import installing


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def ensure_postgres() -> Path:
    """The directory holding initdb and pg_ctl; installs Debian's postgresql if needed."""
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    assert os.geteuid() == 0, "PostgreSQL is missing: install Debian's postgresql (as root)"
    with installing("apt"):
        if _bin_dir() is None:  # else the other worker installed it while this one waited
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
            if subprocess.run(install, env=env).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
                subprocess.run(install, check=True, env=env)
    bin_dir = _bin_dir()
    assert bin_dir is not None, "postgresql was installed but initdb is not where Debian puts it"
    return bin_dir


class PostgresCluster:
    def __init__(self, base: Path) -> None:
        self.bin = ensure_postgres()
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        # initdb and postgres refuse to run as root: as root, the cluster belongs to the
        # `postgres` account the package made.
        self.as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            self.as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _run(self, *cmd: str) -> None:
        subprocess.run(
            [str(self.bin / cmd[0]), *cmd[1:]],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.base,
            **self.as_user,
        )

    def start(self) -> PostgresCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            os.chown(self.base, self.as_user["user"], self.as_user["group"])
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "postgres.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1",
            "start",
        )
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
