"""The fake cloud as a real subprocess (`python -m jupyter_qguard.fakecloud --port 0 ...`) and a
small urllib client for it: shared by the fake cloud's own tests and the broker's."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TERMINAL = ("DONE", "ERROR", "CANCELLED")
START_TIMEOUT = 90.0


@dataclass
class Response:
    status: int
    headers: Any
    body: Any
    elapsed: float

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return self.body["error"]["code"]
        return None


class FakeCloud:
    """A running fake cloud process and a small client for it."""

    def __init__(self, tmp: Path, *extra: str, admin: bool = True, state_dir: Path | None = None):
        self.tmp = tmp
        self.key_file = tmp / "api_key"
        self.admin_file = tmp / "admin_key" if admin else None
        self.state_dir = state_dir
        self.extra = extra
        self.stderr_path = tmp / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_line = ""

    def start(self) -> FakeCloud:
        cmd = [
            sys.executable,
            "-I",
            "-m",
            "jupyter_qguard.fakecloud",
            "--port",
            "0",
            "--api-key-file",
            str(self.key_file),
            *self.extra,
        ]
        if self.admin_file is not None:
            cmd += ["--admin-key-file", str(self.admin_file)]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True, cwd="/"
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        assert ready, f"no start line within {START_TIMEOUT} s: {self.stderr_path.read_text()}"
        self.start_line = self.proc.stdout.readline().decode()
        info = json.loads(self.start_line)
        assert info["pid"] == self.proc.pid
        self.url = info["url"]
        self.api_key = self.key_file.read_text().strip()
        self.admin_key = self.admin_file.read_text().strip() if self.admin_file else None
        # The public status page answers once the backends are loaded.
        assert self.call("GET", "/v1/backends", timeout=START_TIMEOUT).status == 200
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    # -- client ----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        bearer: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Response:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if bearer is not None:
            req.add_header("Authorization", f"Bearer {bearer}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, hdrs, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        elapsed = time.monotonic() - started
        return Response(status, hdrs, json.loads(raw) if raw else None, elapsed)

    def token(self, job_ref: str, action: str, ttl: float | None = None) -> str:
        body: dict[str, Any] = {"job_ref": job_ref, "action": action}
        if ttl is not None:
            body["ttl"] = ttl
        r = self.call("POST", "/v1/tokens", body, bearer=self.api_key)
        assert r.status == 201, r
        return r.body["token"]

    def create(self, job_ref: str, body: dict[str, Any]) -> Response:
        return self.call(
            "POST",
            "/v1/jobs",
            body,
            bearer=self.token(job_ref, "create"),
            headers={"Idempotency-Key": job_ref},
        )

    def job(self, job_id: str, job_ref: str, wait: float | None = None) -> Response:
        query = "" if wait is None else f"?wait={wait}"
        return self.call("GET", f"/v1/jobs/{job_id}{query}", bearer=self.token(job_ref, "read"))

    def wait_job(self, job: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.job(job["id"], job["job_ref"], wait=30)
            assert r.status == 200, r
            if r.body["status"] in TERMINAL:
                return r.body
        raise AssertionError(f"job {job['id']} did not end within {timeout} s")

    def run(self, job_ref: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.create(job_ref, body)
        assert r.status == 201, r
        return self.wait_job(r.body)

    def admin(self, method: str, path: str, body: Any = None) -> Response:
        return self.call(method, path, body, bearer=self.admin_key)

    def fault(self, **spec: Any) -> Response:
        r = self.admin("POST", "/v1/admin/faults", spec)
        assert r.status == 201, r
        return r

    def usage(self) -> dict[str, Any]:
        r = self.call("GET", "/v1/usage", bearer=self.api_key)
        assert r.status == 200, r
        return r.body
