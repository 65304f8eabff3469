"""Secrets: the one module of jupyter_qguard that reads, stores or prompts for a credential.

Project rule: no other module reads the keyring, reads a plaintext credential file, prompts for
a secret or holds an API key. Providers get at most a short-lived scoped token
(`scoped_token` → `ScopedToken.authorization_header()`) or an SDK service object already built
here (`ibm_service`). Nothing in this module logs; values never appear in a message, a repr or
an exception (including exception context: errors raised while a value is in hand use
`from None`).

Keyring layout: service `jupyter-qguard`, one entry per provider, username = provider name
(`fakecloud`, `ibm`, `braket`). The keyring API cannot enumerate entries (only some backends
could, each in its own way), so the store keeps an index entry, username `__index__`, holding
JSON `{"version": 1, "salt": <hex>, "providers": [...]}`. The index is a listing aid only: every
lookup goes to the provider's own entry, and `names()` drops indexed providers whose entry has
gone. The salt keys the fingerprints (HMAC-SHA-256, first 8 hex digits), so a fingerprint
identifies a credential to its owner without being a hash anyone can test guesses against
offline; it lives in the keyring with the secrets it fingerprints.
"""

from __future__ import annotations

import asyncio
import configparser
import getpass
import hashlib
import hmac
import importlib
import ipaddress
import json
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import keyring
import keyring.errors
from keyring.backend import KeyringBackend
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

SERVICE = "jupyter-qguard"
INDEX_USERNAME = "__index__"
# Lower-case names only: they are keyring usernames, CLI arguments and config keys. The index's
# `__index__` can never match.
PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
FINGERPRINT_HEX = 8

IBM_ACCOUNTS_FILE = Path(".qiskit") / "qiskit-ibm.json"
AWS_CREDENTIALS_FILE = Path(".aws") / "credentials"
# Highest precedence first: what the SDKs themselves would use wins.
IBM_TOKEN_VARS = ("QISKIT_IBM_TOKEN", "IBMQ_TOKEN", "QE_TOKEN")
FAKECLOUD_KEY_VAR = "QGUARD_FAKECLOUD_API_KEY"
AWS_KEY_ID_VAR, AWS_SECRET_VAR, AWS_SESSION_VAR = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
# qiskit-ibm-runtime's own order for picking the default saved account (after the account
# flagged `is_default_account`).
IBM_DEFAULT_ACCOUNT_NAMES = (
    "default-ibm-quantum-platform",
    "default-ibm-cloud",
    "default-ibm-quantum",
    "default",
)
BRAKET_KEYS = ("aws_access_key_id", "aws_secret_access_key")


# --- errors ----------------------------------------------------------------------------------


class CredentialError(Exception):
    """A credential is missing or unusable, or the keyring refused. Never holds a value."""


class CredentialNotFound(CredentialError, KeyError):
    """No entry for this provider in the keyring."""

    def __init__(self, provider: str) -> None:
        super().__init__(missing_message(provider))
        self.provider = provider

    def __str__(self) -> str:
        # KeyError's str() would quote the message.
        return str(self.args[0])


def missing_message(provider: str) -> str:
    return (
        f"no credential for '{provider}' in the keyring (service '{SERVICE}'): run "
        f"`jupyter qguard credentials set {provider}` or `jupyter qguard credentials import`"
    )


class TokenExchangeError(Exception):
    """The scoped-token exchange failed. `status` is the HTTP status, or None when no response
    came (codes `unreachable`, `timeout`); `retry_after` is seconds, from `Retry-After`."""

    def __init__(
        self, status: int | None, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, message, retry_after)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        text = f"token exchange failed ({where}, {self.code}): {self.message}"
        if self.retry_after is not None:
            text += f"; retry after {self.retry_after:g} s"
        return text


# --- value holders ---------------------------------------------------------------------------


class Secret:
    """A credential read from the keyring. Its repr and str name the provider and fingerprint
    only; the value is read by this module's functions (`_reveal`) and nowhere else."""

    __slots__ = ("_value", "fingerprint", "provider")

    def __init__(self, provider: str, value: str, fingerprint: str) -> None:
        self.provider, self.fingerprint, self._value = provider, fingerprint, value

    def __repr__(self) -> str:
        return f"Secret({self.provider!r}, fp={self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling is how objects leave the process (multiprocessing, caches): refuse.
        raise TypeError("a Secret cannot be pickled")


def _reveal(secret: Secret) -> str:
    return secret._value


class ScopedToken:
    """A short-lived token scoped to one job and action. `authorization_header()` is the only
    way a provider gets at it."""

    __slots__ = ("_token", "action", "expires_at", "job_ref", "provider")

    def __init__(
        self, provider: str, token: str, expires_at: datetime, job_ref: str, action: str
    ) -> None:
        self.provider, self.job_ref, self.action = provider, job_ref, action
        self.expires_at, self._token = expires_at, token

    def authorization_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def expired(self, now: datetime | None = None, margin: float = 0.0) -> bool:
        """True once fewer than `margin` seconds remain."""
        now = now or datetime.now(UTC)
        return (self.expires_at - now).total_seconds() <= margin

    def __repr__(self) -> str:
        return (
            f"ScopedToken({self.provider!r}, job_ref={self.job_ref!r}, action={self.action!r}, "
            f"expires_at='{self.expires_at.isoformat()}')"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a ScopedToken cannot be pickled")


# --- keyring ---------------------------------------------------------------------------------


def backend_from_name(name: str, **options: Any) -> KeyringBackend:
    """A keyring backend from its dotted class path, with properties set (keyring's own
    `with_properties`), e.g. `backend_from_name("keyrings.alt.file.PlaintextKeyring",
    file_path="/srv/qguard/keyring.cfg")`. Unknown properties are refused, so a misspelt
    `file_path` cannot silently fall back to the default file."""
    module_name, _, class_name = name.rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"keyring backend must be a dotted class path, not {name!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"no keyring backend class {name!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, KeyringBackend)):
        raise ValueError(f"{name!r} is not a keyring backend class")
    unknown = sorted(k for k in options if not hasattr(cls, k))
    if unknown:
        raise ValueError(f"keyring backend {name} has no properties {', '.join(unknown)}")
    backend = cls()
    if not options:
        return backend
    return backend.with_properties(**{k: _property(v) for k, v in options.items()})


def _property(value: Any) -> Any:
    return str(value.expanduser()) if isinstance(value, Path) else value


def check_provider(provider: str) -> str:
    if not isinstance(provider, str) or not PROVIDER_NAME.fullmatch(provider):
        raise ValueError(
            f"invalid provider name {provider!r}: lower-case letters, digits, '-' and '_', "
            "starting with a letter, at most 32 characters"
        )
    return provider


class CredentialStore:
    """Credentials in a keyring: service `jupyter-qguard`, username = provider name."""

    def __init__(self, backend: KeyringBackend | None = None) -> None:
        self.backend = backend if backend is not None else keyring.get_keyring()
        # Called with (provider, fingerprint, purpose) each time a credential is read for use:
        # the broker writes it to the audit log (by name, never by value).
        self.on_use: Callable[[str, str, str], None] | None = None

    def __repr__(self) -> str:
        return f"CredentialStore(backend={self.backend_name})"

    @property
    def backend_name(self) -> str:
        cls = type(self.backend)
        return f"{cls.__module__}.{cls.__qualname__}"

    def set(self, provider: str, secret: str) -> str:
        """Store (or replace) the provider's credential; returns its fingerprint."""
        check_provider(provider)
        if not isinstance(secret, str) or not secret:
            raise CredentialError(f"refusing to store an empty credential for '{provider}'")
        index = self._index()
        salt = self._ensure_salt(index)
        self._call("store", provider, self.backend.set_password, SERVICE, provider, secret)
        # Entry first, index second: an interrupted set leaves an unlisted entry, never a
        # listed one that is missing.
        if provider not in index["providers"]:
            index["providers"] = sorted([*index["providers"], provider])
        self._write_index(index)
        return _fingerprint(salt, secret)

    def delete(self, provider: str) -> None:
        check_provider(provider)
        if self._get(provider) is None:
            raise CredentialNotFound(provider)
        self._call("delete", provider, self.backend.delete_password, SERVICE, provider)
        index = self._index()
        if provider in index["providers"]:
            index["providers"] = [p for p in index["providers"] if p != provider]
            self._write_index(index)

    def has(self, provider: str) -> bool:
        check_provider(provider)
        return self._get(provider) is not None

    def get(self, provider: str, purpose: str = "") -> Secret:
        """The provider's credential, wrapped; CredentialNotFound if there is none."""
        check_provider(provider)
        value = self._get(provider)
        if value is None:
            raise CredentialNotFound(provider)
        secret = Secret(provider, value, self._fingerprint(value))
        if self.on_use is not None:
            self.on_use(provider, secret.fingerprint, purpose)
        return secret

    def names(self) -> list[dict[str, str]]:
        """[{"provider", "fingerprint"}] for the indexed providers whose entry exists."""
        index = self._index()
        if index["salt"] is None:
            return []
        out = []
        for provider in index["providers"]:
            value = self._get(provider)
            if value is not None:
                out.append(
                    {"provider": provider, "fingerprint": _fingerprint(index["salt"], value)}
                )
        return out

    # Any value's fingerprint under this keyring's salt (made on first use): import reports
    # fingerprint plaintext values before, or instead of, storing them.
    def _fingerprint(self, value: str) -> str:
        return _fingerprint(self._ensure_salt(self._index()), value)

    def _get(self, provider: str) -> str | None:
        return self._call("read", provider, self.backend.get_password, SERVICE, provider)

    def _index(self) -> dict[str, Any]:
        raw = self._call("read", INDEX_USERNAME, self.backend.get_password, SERVICE, INDEX_USERNAME)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        salt = data.get("salt") if isinstance(data, dict) else None
        providers = data.get("providers") if isinstance(data, dict) else None
        return {
            "version": 1,
            "salt": salt
            if isinstance(salt, str) and re.fullmatch(r"[0-9a-f]{32,}", salt)
            else None,
            "providers": sorted(
                {p for p in providers or [] if isinstance(p, str) and PROVIDER_NAME.fullmatch(p)}
            ),
        }

    def _ensure_salt(self, index: dict[str, Any]) -> bytes:
        if index["salt"] is None:
            index["salt"] = secrets.token_hex(16)
            self._write_index(index)
        return bytes.fromhex(index["salt"])

    def _write_index(self, index: dict[str, Any]) -> None:
        self._call(
            "store",
            INDEX_USERNAME,
            self.backend.set_password,
            SERVICE,
            INDEX_USERNAME,
            json.dumps(index, sort_keys=True),
        )

    def _call(self, what: str, username: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except keyring.errors.KeyringError as exc:
            # Backend messages name the backend's problem (locked, none available), not values;
            # the context is dropped all the same, since it holds the call's arguments.
            raise CredentialError(
                f"keyring backend {self.backend_name} could not {what} '{username}' "
                f"(service '{SERVICE}'): {type(exc).__name__}: {exc}"
            ) from None


def _fingerprint(salt: bytes | str, value: str) -> str:
    key = bytes.fromhex(salt) if isinstance(salt, str) else salt
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:FINGERPRINT_HEX]


# --- scoped tokens ---------------------------------------------------------------------------


async def scoped_token(
    store: CredentialStore,
    provider: str,
    base_url: str,
    job_ref: str,
    action: str,
    ttl: int | None = None,
    timeout: float = 30,
) -> ScopedToken:
    """Exchange the provider's API key (from the keyring) for a token scoped to one job and
    action: POST {base_url}/v1/tokens. Raises CredentialError (no key, or a URL the key must not
    go to) or TokenExchangeError."""
    url = _token_url(provider, base_url)
    if not (isinstance(job_ref, str) and job_ref and isinstance(action, str) and action):
        raise ValueError("job_ref and action must be non-empty strings")
    body: dict[str, Any] = {"job_ref": job_ref, "action": action}
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        body["ttl"] = ttl
    # Keyring backends block (D-Bus, an unlock prompt, file I/O): keep them off the loop.
    secret = await asyncio.to_thread(store.get, provider, f"{action} token for {job_ref}")
    request = HTTPRequest(
        url,
        method="POST",
        headers={
            "Authorization": f"Bearer {_reveal(secret)}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        body=json.dumps(body),
        connect_timeout=timeout,
        request_timeout=timeout,
        # A redirect would carry the key to wherever it points.
        follow_redirects=False,
    )
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except HTTPClientError as exc:
        # Tornado's own failures (599: timeout, stream closed); their text holds no headers.
        code = "timeout" if "timeout" in str(exc).lower() else "unreachable"
        raise TokenExchangeError(None, code, f"{url}: {exc.message}") from None
    except OSError as exc:
        raise TokenExchangeError(None, "unreachable", f"{url}: {exc.strerror or exc}") from None
    if response.code in (200, 201):
        return _parse_token(provider, secret, response.body, job_ref, action)
    raise _exchange_error(secret, response.code, response.body, response.headers, response.reason)


def _token_url(provider: str, base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CredentialError(
            f"{provider} base URL must be http(s)://host[:port], not {base_url!r}"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise CredentialError(
            f"refusing to send the {provider} API key over plain http to {parts.hostname}: "
            "use https (plain http is for 127.0.0.1/localhost only)"
        )
    return base_url.rstrip("/") + "/v1/tokens"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_token(
    provider: str, secret: Secret, raw: bytes | None, job_ref: str, action: str
) -> ScopedToken:
    def bad(why: str) -> TokenExchangeError:
        return TokenExchangeError(201, "bad_response", why)

    try:
        data = json.loads(raw or b"")
    except ValueError:
        raise bad("the token response is not JSON") from None
    if not isinstance(data, dict):
        raise bad("the token response is not a JSON object")
    token = data.get("token")
    if not isinstance(token, str) or not token:
        raise bad("the token response has no token")
    if token == _reveal(secret):
        raise bad("the server returned the API key as the token")
    # A token scoped to something else is useless at best; never hand it on.
    if data.get("job_ref") != job_ref or data.get("action") != action:
        raise bad("the token is scoped to a different job_ref or action than requested")
    expires_at = _parse_time(data.get("expires_at"))
    if expires_at is None:
        raise bad("the token response has no valid expires_at")
    return ScopedToken(provider, token, expires_at, job_ref, action)


def _parse_time(value: Any) -> datetime | None:
    """ISO 8601 (naive means UTC) or epoch seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _exchange_error(
    secret: Secret, status: int, raw: bytes | None, headers: Any, reason: str | None
) -> TokenExchangeError:
    code, message = f"http_{status}", reason or ""
    try:
        data = json.loads(raw or b"")
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("code"), str) and error["code"]:
            code = error["code"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    # The server's text is shown to people: cut it short, and never let it echo the key back.
    key = _reveal(secret)
    code, message = code.replace(key, "[redacted]")[:64], message.replace(key, "[redacted]")[:300]
    retry_after = _parse_retry_after(headers.get("Retry-After") if headers else None)
    return TokenExchangeError(status, code, message, retry_after)


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- IBM -------------------------------------------------------------------------------------


def ibm_service(
    store: CredentialStore,
    *,
    channel: str,
    instance: str | None,
    service_class: type | None = None,
) -> Any:
    """A QiskitRuntimeService built with the `ibm` token from the keyring. The token goes to the
    SDK object and nowhere else; the caller gets the object."""
    secret = store.get("ibm", "IBM Quantum service")
    if service_class is None:
        # Imported here: qiskit_ibm_runtime is slow to import and only this path needs it.
        from qiskit_ibm_runtime import QiskitRuntimeService

        service_class = QiskitRuntimeService
    token = _reveal(secret)
    try:
        return service_class(channel=channel, token=token, instance=instance)
    except Exception as exc:
        if token in str(exc) or token in repr(exc.args):
            raise CredentialError(
                f"the IBM Quantum service could not be created ({type(exc).__name__}; its "
                "message is withheld because it contains the token)"
            ) from None
        raise


# --- importing plaintext credentials ---------------------------------------------------------


@dataclass(frozen=True)
class ImportReport:
    """What happened to one plaintext source. `info` holds non-secret details only (IBM
    channel/instance/account names, AWS profile names, environment variable names)."""

    source: str
    provider: str
    fingerprint: str | None
    stored: bool
    deleted: bool
    note: str
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    problem: bool = False

    def line(self) -> str:
        fp = f" (fingerprint {self.fingerprint})" if self.fingerprint else ""
        return f"{self.source} -> {self.provider}{fp}: {self.note}"


@dataclass
class _Found:
    source: str
    provider: str
    value: str | None
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def _braket_blob(key_id: str, secret_key: str, session: str | None) -> str:
    # Canonical JSON, so the same credentials from two sources compare equal.
    blob = {"aws_access_key_id": key_id, "aws_secret_access_key": secret_key}
    if session:
        blob["aws_session_token"] = session
    return json.dumps(blob, sort_keys=True, separators=(",", ":"))


def _find_ibm_file(home: Path) -> list[_Found]:
    path = home / IBM_ACCOUNTS_FILE
    source = f"~/{IBM_ACCOUNTS_FILE.as_posix()}"
    if not path.is_file():
        return []
    try:
        accounts = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        # The position only: the exception's own text is fine, but its .doc is the file.
        why = f"not valid JSON (line {exc.lineno} column {exc.colno})"
        return [_Found(source, "ibm", None, path, problem=why)]
    except (OSError, UnicodeDecodeError) as exc:
        why = f"cannot read it ({type(exc).__name__})"
        return [_Found(source, "ibm", None, path, problem=why)]
    if not isinstance(accounts, dict):
        return [_Found(source, "ibm", None, path, problem="not a JSON object of saved accounts")]
    usable = {
        name: acct
        for name, acct in accounts.items()
        if isinstance(acct, dict) and isinstance(acct.get("token"), str) and acct["token"]
    }
    if not usable:
        return [_Found(source, "ibm", None, path, problem="no saved account with a token")]
    flagged = [n for n, a in usable.items() if a.get("is_default_account")]
    named = [n for n in IBM_DEFAULT_ACCOUNT_NAMES if n in usable]
    name = (flagged or named or list(usable))[0]
    account = usable[name]
    info = {
        "account": name,
        "channel": account.get("channel"),
        "instance": account.get("instance"),
        "other_accounts": sorted(n for n in accounts if n != name),
    }
    return [_Found(source, "ibm", account["token"], path, info)]


def _find_aws_file(home: Path) -> list[_Found]:
    path = home / AWS_CREDENTIALS_FILE
    source = f"~/{AWS_CREDENTIALS_FILE.as_posix()}"
    if not path.is_file():
        return []
    # No interpolation: a '%' in a secret key is just a character.
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        # configparser errors quote the offending line, which may be a secret: name the type.
        return [
            _Found(source, "braket", None, path, problem=f"cannot parse it ({type(exc).__name__})")
        ]
    info = {
        "profile": "default",
        "other_profiles": sorted(s for s in parser.sections() if s != "default"),
    }
    if not parser.has_section("default"):
        return [_Found(source, "braket", None, path, info, problem="no [default] profile")]
    section = parser["default"]
    key_id, secret_key = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key_id or not secret_key:
        return [
            _Found(
                source,
                "braket",
                None,
                path,
                info,
                problem="[default] lacks aws_access_key_id or aws_secret_access_key",
            )
        ]
    session = section.get("aws_session_token")
    info["session_token"] = bool(session)
    return [_Found(source, "braket", _braket_blob(key_id, secret_key, session), path, info)]


def _find_env(environ: Mapping[str, str]) -> list[_Found]:
    found = []
    for var in IBM_TOKEN_VARS:
        if environ.get(var):
            info = {"unset": [var]}
            for extra in ("QISKIT_IBM_CHANNEL", "QISKIT_IBM_INSTANCE"):
                if environ.get(extra):
                    info[extra.removeprefix("QISKIT_IBM_").lower()] = environ[extra]
            found.append(_Found(f"env {var}", "ibm", environ[var], info=info))
    key_id, secret_key = environ.get(AWS_KEY_ID_VAR), environ.get(AWS_SECRET_VAR)
    session = environ.get(AWS_SESSION_VAR)
    aws_vars = [v for v in (AWS_KEY_ID_VAR, AWS_SECRET_VAR, AWS_SESSION_VAR) if environ.get(v)]
    if key_id and secret_key:
        found.append(
            _Found(
                f"env {'+'.join(aws_vars)}",
                "braket",
                _braket_blob(key_id, secret_key, session),
                info={"unset": aws_vars, "session_token": bool(session)},
            )
        )
    elif key_id or secret_key:
        missing = AWS_SECRET_VAR if key_id else AWS_KEY_ID_VAR
        found.append(
            _Found(
                f"env {'+'.join(aws_vars)}",
                "braket",
                None,
                info={"unset": aws_vars},
                problem=f"{missing} is not set, so there is no complete AWS credential",
            )
        )
    if environ.get(FAKECLOUD_KEY_VAR):
        found.append(
            _Found(
                f"env {FAKECLOUD_KEY_VAR}",
                "fakecloud",
                environ[FAKECLOUD_KEY_VAR],
                info={"unset": [FAKECLOUD_KEY_VAR]},
            )
        )
    return found


def store_key_file(store: CredentialStore, provider: str, path: Path) -> str:
    """Put the key held in a file (one line) into the keyring; return its fingerprint. For keys
    a service generated for us, as the fake cloud does for `make demo`."""
    value = path.read_text("utf-8").strip()
    if not value:
        raise CredentialError(f"{path} holds no key")
    return store.set(provider, value)


def import_plaintext(
    store: CredentialStore,
    *,
    home: Path,
    environ: Mapping[str, str],
    delete: Callable[[Path], bool] | bool = False,
    overwrite: bool = False,
) -> list[ImportReport]:
    """Move plaintext credentials into the keyring; one report per source found.

    Sources: ~/.qiskit/qiskit-ibm.json (default account's token) and QISKIT_IBM_TOKEN,
    IBMQ_TOKEN, QE_TOKEN → `ibm`; ~/.aws/credentials [default] and AWS_ACCESS_KEY_ID +
    AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN) → `braket` (a JSON object);
    QGUARD_FAKECLOUD_API_KEY → `fakecloud`. When one provider has several sources, the
    environment wins over files (as in the SDKs), in the order above. A keyring entry that
    already holds a different value is kept unless `overwrite`.

    `delete` (True, False or asked per file) decides whether a file whose credential is now in
    the keyring is removed, the whole file; a file whose credential differs from the keyring's
    is never offered. Environment variables cannot be removed from the parent shell: their
    reports say to unset them.
    """
    found = _find_env(environ) + _find_ibm_file(home) + _find_aws_file(home)
    by_provider: dict[str, list[_Found]] = {}
    for item in found:
        by_provider.setdefault(item.provider, []).append(item)
    reports: dict[int, ImportReport] = {}
    for provider, items in by_provider.items():
        winner = next((f for f in items if f.value is not None), None)
        existing = store._get(provider)
        stored = False
        if (
            winner is not None
            and winner.value is not None
            and existing != winner.value
            and (existing is None or overwrite)
        ):
            store.set(provider, winner.value)
            stored, existing = True, winner.value
        for item in items:
            reports[id(item)] = _report(store, item, winner, existing, stored, delete)
    return [reports[id(item)] for item in found]


def _report(
    store: CredentialStore,
    item: _Found,
    winner: _Found | None,
    in_keyring: str | None,
    stored: bool,
    delete: Callable[[Path], bool] | bool,
) -> ImportReport:
    base = {"source": item.source, "provider": item.provider, "path": item.path, "info": item.info}
    if item.value is None:
        return ImportReport(
            **base,
            fingerprint=None,
            stored=False,
            deleted=False,
            note=item.problem or "",
            problem=True,
        )
    fp = store._fingerprint(item.value)
    unset = item.info.get("unset")
    from_winner = winner is not None and winner.value == in_keyring
    winner_source = winner.source if winner is not None else ""
    if item.value != in_keyring:
        if from_winner:
            note = f"not imported: differs from the credential taken from {winner_source}"
        else:
            note = (
                f"not imported: the keyring already holds a different credential for "
                f"'{item.provider}' (fingerprint {store._fingerprint(in_keyring or '')}); "
                f"replace it with `jupyter qguard credentials set {item.provider}`"
            )
        note += "; left in place, check which one is current"
        return ImportReport(**base, fingerprint=fp, stored=False, deleted=False, note=note)
    if item is winner:
        note = "imported into the keyring" if stored else "already in the keyring"
    elif from_winner:
        note = f"same credential as {winner_source}"
    else:
        note = "already in the keyring"
    deleted = False
    if unset:
        note += (
            f"; now unset {' '.join(unset)} in your shell and its startup files (a program "
            "cannot unset its parent's environment)"
        )
    elif item.path is not None:
        wanted = delete(item.path) if callable(delete) else bool(delete)
        if wanted:
            try:
                # A plain unlink: overwriting first buys nothing on journaling or copy-on-write
                # filesystems and SSDs, where the old blocks survive the overwrite anyway.
                item.path.unlink()
                deleted = True
                note += "; plaintext file deleted"
            except OSError as exc:
                note += f"; could not delete the file: {exc.strerror or type(exc).__name__}"
        else:
            note += "; plaintext file kept (delete it yourself once you no longer need it)"
    return ImportReport(
        **base, fingerprint=fp, stored=stored and item is winner, deleted=deleted, note=note
    )


# --- command-line entry points (wired into `jupyter qguard credentials ...` by cli.py) --------


def _stream(stream: TextIO | None, default: TextIO) -> TextIO:
    return stream if stream is not None else default


def ask_yes_no(prompt: str, *, input_fn: Callable[[str], str] = input) -> bool:
    """y/N question; anything but y/yes (or no terminal) is no."""
    try:
        return input_fn(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cli_set(
    store: CredentialStore,
    provider: str,
    *,
    stdin_isatty: bool,
    read_secret: Callable[[str], str] = getpass.getpass,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`credentials set PROVIDER`: prompt twice without echo on a terminal; otherwise read one
    line from stdin (`printf %s "$KEY" | jupyter qguard credentials set fakecloud`).
    Exit codes: 0 stored, 1 nothing stored, 2 bad provider name."""
    out, err = _stream(out, sys.stdout), _stream(err, sys.stderr)
    try:
        check_provider(provider)
    except ValueError as exc:
        print(str(exc), file=err)
        return 2
    what = "AWS credentials as JSON" if provider == "braket" else "credential"
    try:
        if stdin_isatty:
            value = read_secret(f"{what} for {provider} (not echoed): ")
            again = read_secret("again, to confirm: ")
            if value != again:
                print("the two entries differ; nothing stored", file=err)
                return 1
            value = value.strip()
        else:
            value = _stream(stdin, sys.stdin).readline().strip()
    except (EOFError, KeyboardInterrupt):
        print("cancelled; nothing stored", file=err)
        return 1
    if not value:
        print("empty credential; nothing stored", file=err)
        return 1
    if provider == "braket" and not _valid_braket(value):
        print(
            'braket takes a JSON object {"aws_access_key_id": ..., "aws_secret_access_key": ...'
            '[, "aws_session_token": ...]}, or run `jupyter qguard credentials import`; '
            "nothing stored",
            file=err,
        )
        return 1
    try:
        replaced = store.has(provider)
        fp = store.set(provider, value)
    except CredentialError as exc:
        print(f"{exc}; nothing stored", file=err)
        return 1
    verb = "replaced" if replaced else "stored"
    print(
        f"{verb} the credential for '{provider}' in {store.backend_name} (fingerprint {fp})",
        file=out,
    )
    return 0


def _valid_braket(value: str) -> bool:
    try:
        blob = json.loads(value)
    except ValueError:
        return False
    return (
        isinstance(blob, dict)
        and all(isinstance(blob.get(k), str) and blob[k] for k in BRAKET_KEYS)
        and set(blob) <= {*BRAKET_KEYS, "aws_session_token"}
    )


def cli_list(store: CredentialStore) -> str:
    """`credentials list`: providers and fingerprints, never values."""
    rows = store.names()
    if not rows:
        return f"no credentials in the keyring (service '{SERVICE}', {store.backend_name})"
    width = max(len("PROVIDER"), *(len(r["provider"]) for r in rows))
    lines = [f"{'PROVIDER'.ljust(width)}  FINGERPRINT"]
    lines += [f"{r['provider'].ljust(width)}  {r['fingerprint']}" for r in rows]
    return "\n".join(lines)


def cli_delete(
    store: CredentialStore,
    provider: str,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`credentials delete PROVIDER`. Exit codes: 0 deleted, 1 none there or keyring error,
    2 bad provider name."""
    out, err = _stream(out, sys.stdout), _stream(err, sys.stderr)
    try:
        store.delete(provider)
    except ValueError as exc:
        print(str(exc), file=err)
        return 2
    except CredentialNotFound:
        print(f"no credential for '{provider}' in the keyring; nothing deleted", file=err)
        return 1
    except CredentialError as exc:
        print(str(exc), file=err)
        return 1
    print(f"deleted the credential for '{provider}' from {store.backend_name}", file=out)
    return 0


def cli_import(
    store: CredentialStore,
    home: Path,
    environ: Mapping[str, str],
    ask: Callable[[str], bool],
    *,
    overwrite: bool = False,
    out: TextIO | None = None,
) -> int:
    """`credentials import`: move plaintext credentials into the keyring, asking (via `ask`,
    e.g. `ask_yes_no`) before deleting each file. Exit codes: 0 done (or nothing found), 1 a
    source was found but could not be imported."""
    out = _stream(out, sys.stdout)

    def ask_file(path: Path) -> bool:
        shown = f"~/{path.relative_to(home).as_posix()}" if path.is_relative_to(home) else path
        return ask(
            f"Delete {shown}? Its credential is now in the keyring; the whole file goes, "
            "with any other accounts or profiles in it. [y/N] "
        )

    try:
        reports = import_plaintext(
            store, home=home, environ=environ, delete=ask_file, overwrite=overwrite
        )
    except CredentialError as exc:
        print(str(exc), file=out)
        return 1
    if not reports:
        print(
            "no plaintext credentials found (~/.qiskit/qiskit-ibm.json, ~/.aws/credentials, "
            f"{', '.join(IBM_TOKEN_VARS)}, {AWS_KEY_ID_VAR}/{AWS_SECRET_VAR}, "
            f"{FAKECLOUD_KEY_VAR})",
            file=out,
        )
        return 0
    for report in reports:
        print(report.line(), file=out)
        info = report.info
        if report.provider == "ibm" and (info.get("channel") or info.get("instance")):
            print(
                f"  (not secret, configure the ibm provider with: channel={info.get('channel')}, "
                f"instance={info.get('instance')})",
                file=out,
            )
    return 1 if any(r.problem for r in reports) else 0


# --- Amazon Braket ---------------------------------------------------------------------------


def braket_session(store: CredentialStore, *, region: str) -> Any:
    """A braket.aws.AwsSession whose boto3 session holds exactly the `braket` keyring entry's
    keys, in `region`. Explicit keys mean boto3 never consults its own credential chain (the
    AWS_* variables, shared files, instance roles), so the keyring is the one source. The keys
    go to the SDK object and nowhere else; the caller gets the object."""
    secret = store.get("braket", "AWS session")
    value = _reveal(secret)
    if not _valid_braket(value):
        raise CredentialError(
            "the 'braket' credential in the keyring is not a JSON object "
            '{"aws_access_key_id": ..., "aws_secret_access_key": ...[, "aws_session_token": ...]}:'
            " store it again with `jupyter qguard credentials set braket` or "
            "`jupyter qguard credentials import`"
        )
    blob = json.loads(value)
    # Imported here: boto3 and the Braket SDK are the optional `braket` extra.
    import boto3
    from braket.aws import AwsSession

    try:
        return AwsSession(
            boto_session=boto3.Session(
                aws_access_key_id=blob["aws_access_key_id"],
                aws_secret_access_key=blob["aws_secret_access_key"],
                aws_session_token=blob.get("aws_session_token"),
                region_name=region,
            )
        )
    except Exception as exc:
        text = f"{exc} {exc.args!r}"
        if any(v in text for v in blob.values()):
            raise CredentialError(
                f"the Amazon Braket session could not be created ({type(exc).__name__}; its "
                "message is withheld because it contains the credential)"
            ) from None
        raise


# --- the audit log's signing key -------------------------------------------------------------

AUDIT_KEY_USERNAME = "__audit_signing_key__"


class NoteSigner:
    """Signs the audit log's checkpoints with the Ed25519 key kept in the keyring. The private
    key stays in this object; the audit log sees `public_key` (32 raw bytes) and `sign()`."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = key
        self.public_key: bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"NoteSigner(public_key={self.public_key.hex()[:16]}…)"

    def __reduce__(self) -> Any:
        raise TypeError("a NoteSigner cannot be pickled")


def _load_ed25519(raw: str | None) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not raw:
        return None
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(raw))
    except ValueError:
        return None


def audit_signer(store: CredentialStore, *, create: bool = True) -> NoteSigner | None:
    """The audit signing key; made and stored on first use when `create` (the server), read
    only otherwise (the command line verifies with its public half). None: no key yet."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    def read() -> Any:
        return _load_ed25519(
            store._call(
                "read", AUDIT_KEY_USERNAME, store.backend.get_password, SERVICE, AUDIT_KEY_USERNAME
            )
        )

    key = read()
    if key is None and create:
        new = Ed25519PrivateKey.generate()
        raw = new.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
        name = AUDIT_KEY_USERNAME
        store._call("store", name, store.backend.set_password, SERVICE, name, raw)
        # Read back: if two servers raced to make a key, both sign with the one that stayed.
        key = read()
    return NoteSigner(key) if key is not None else None


# --- step-up MFA (TOTP, RFC 6238) ------------------------------------------------------------

TOTP_PREFIX = "__totp__:"
TOTP_ISSUER = "jupyter-qguard"
USER_NAME = re.compile(r"[^\s\x00-\x1f:]{1,128}")


def _totp_username(user: str) -> str:
    if not isinstance(user, str) or not USER_NAME.fullmatch(user):
        raise ValueError(f"invalid user name for MFA: {user!r}")
    return TOTP_PREFIX + user


def mfa_enrolled(store: CredentialStore, user: str) -> bool:
    name = _totp_username(user)
    return bool(store._call("read", name, store.backend.get_password, SERVICE, name))


def mfa_delete(store: CredentialStore, user: str) -> bool:
    name = _totp_username(user)
    if not mfa_enrolled(store, user):
        return False
    store._call("delete", name, store.backend.delete_password, SERVICE, name)
    return True


def _totp(store: CredentialStore, user: str) -> Any:
    import pyotp

    name = _totp_username(user)
    secret = store._call("read", name, store.backend.get_password, SERVICE, name)
    return pyotp.TOTP(secret, issuer=TOTP_ISSUER, name=user) if secret else None


def mfa_time_step(
    store: CredentialStore, user: str, code: str, *, at: datetime | None = None, window: int = 1
) -> int | None:
    """The RFC 6238 time step `code` belongs to (the current one ± `window`, for clock skew),
    or None if it is no valid code of `user`'s. Single use is the caller's part: a step once
    accepted must not be accepted again."""
    totp = _totp(store, user)
    if totp is None:
        raise CredentialError(f"no MFA enrolled for {user}; run `jupyter qguard mfa enroll`")
    if not (isinstance(code, str) and code.isdigit() and len(code) == totp.digits):
        return None
    now = totp.timecode(at or datetime.now(UTC))
    for step in range(now - window, now + window + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def cli_mfa_enroll(
    store: CredentialStore,
    user: str,
    *,
    replace: bool = False,
    qr: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`mfa enroll`: a new TOTP secret in the keyring, shown once as an otpauth URI and a
    terminal QR code for an authenticator app. Exit codes: 0 enrolled, 1 not."""
    import pyotp

    out, err = _stream(out, sys.stdout), _stream(err, sys.stderr)
    try:
        name = _totp_username(user)
        if mfa_enrolled(store, user) and not replace:
            print(
                f"{user} is already enrolled; `--replace` makes a new secret (the old codes stop "
                "working)",
                file=err,
            )
            return 1
        secret = pyotp.random_base32()
        store._call("store", name, store.backend.set_password, SERVICE, name, secret)
    except (ValueError, CredentialError) as exc:
        print(f"{exc}; not enrolled", file=err)
        return 1
    uri = pyotp.TOTP(secret, issuer=TOTP_ISSUER, name=user).provisioning_uri()
    print(f"MFA enrolled for {user} in {store.backend_name}.", file=out)
    print("Add it to an authenticator app: scan the code or enter this URI.", file=out)
    print(uri, file=out)
    if qr:
        import segno

        segno.make(uri, error="m").terminal(out=out, compact=True)
    return 0


# --- agent tokens ----------------------------------------------------------------------------
# Bearer tokens for agents that reach Jupyter from outside (jupyter qguard agent-token). Made
# and hashed here; the server keeps the SHA-256 digest only (the token has 256 random bits, so a
# plain digest cannot be searched), and the token is shown once, when it is made.

AGENT_TOKEN_PREFIX = "qga_"
_AGENT_TOKEN = re.compile(r"qga_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def mint_agent_token() -> tuple[str, str, str]:
    """A new agent token: (token id, the token to hand to the agent once, its digest)."""
    token_id = secrets.token_hex(6)
    token = f"{AGENT_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return token_id, token, _agent_digest(token)


def agent_token_id(presented: str) -> tuple[str, str] | None:
    """(token id, digest) of a token as an agent presented it; None if it is not one."""
    m = _AGENT_TOKEN.fullmatch(presented)
    if m is None:
        return None
    return m.group(1), _agent_digest(presented)


def agent_digest_matches(stored: str, presented_digest: str) -> bool:
    return hmac.compare_digest(stored, presented_digest)


def _agent_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
