"""Who we are to a registry: ``--user``, or Docker's ``config.json`` and credential helpers.

:class:`Credentials` answers ``get(host)`` with a :class:`Secret` or None (anonymous):

1. ``--user USER[:PASSWORD]`` (the CLI prompts for a missing password on a terminal, before
   any request) applies to every host of the operation, as with ``ctr --user``;
2. otherwise ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``):
   ``credHelpers[host]`` first, then ``auths[host]`` (``auth`` = base64 ``user:password``, or
   ``username``/``password``, or ``identitytoken``), then ``credsStore``. A helper is run as
   ``docker-credential-<name> get`` with the server on standard input; its ``Username``
   ``<token>`` means the ``Secret`` is an identity (refresh) token. Docker Hub is looked up
   under ``https://index.docker.io/v1/`` as docker writes it, and under its plain names.

A helper that fails ("credentials not found") means anonymous; one that is missing or
answers garbage is an error naming the helper, since the user asked for it in the file.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

from cargohold._record import record
from cargohold.errors import InvalidArgument

HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
            "registry-1.docker.io")
HELPER_TIMEOUT = 30


@record(frozen=True)
class Secret:
    """A username and password, or an identity token (``username`` then is ``<token>``)."""

    username: str
    password: str = ""
    identity_token: str = ""
    source: str = ""  # "--user", "config.json auths", "helper docker-credential-x"

    def __repr__(self) -> str:  # never print the secret
        return f"Secret({self.username!r}, source={self.source!r})"


def parse_user(text: str) -> tuple[str, str | None]:
    """``USER[:PASSWORD]`` → (user, password or None when absent)."""
    user, sep, password = text.partition(":")
    if not user:
        raise InvalidArgument(f"--user {text!r}: no user name",
                              hint="write it as --user USER or --user USER:PASSWORD")
    return user, (password if sep else None)


def docker_config_path() -> str:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


class Credentials:
    """Credential lookup for one operation (see the module docstring); results are cached."""

    def __init__(self, user: Secret | None = None, config_path: str | None = None) -> None:
        self.user = user
        self.config_path = config_path or docker_config_path()
        self._doc: dict | None = None
        self._cache: dict[str, Secret | None] = {}

    def get(self, host: str) -> Secret | None:
        if self.user is not None:
            return self.user
        if host not in self._cache:
            self._cache[host] = self._lookup(host)
        return self._cache[host]

    def _config(self) -> dict:
        if self._doc is None:
            try:
                with open(self.config_path, encoding="utf-8") as f:
                    doc = json.load(f)
            except FileNotFoundError:
                doc = {}
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"docker config {self.config_path}: cannot read: {exc}",
                                      hint="fix or move the file (or give --user)") from exc
            self._doc = doc if isinstance(doc, dict) else {}
        return self._doc

    def _keys(self, host: str) -> list[str]:
        if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
            return list(HUB_KEYS)
        return [host, f"https://{host}", f"http://{host}"]

    def _lookup(self, host: str) -> Secret | None:
        doc = self._config()
        helpers = doc.get("credHelpers") or {}
        for k in self._keys(host):
            if k in helpers:
                return run_helper(str(helpers[k]), k)
        auths = doc.get("auths") or {}
        for k in self._keys(host):
            if k in auths and isinstance(auths[k], dict):
                s = _from_auth(auths[k], self.config_path, k)
                if s is not None:
                    return s
        store = doc.get("credsStore")
        if store:
            return run_helper(str(store), self._keys(host)[0])
        return None


def _from_auth(entry: dict, path: str, key: str) -> Secret | None:
    src = f"{path} auths.{key}"
    if entry.get("identitytoken"):
        return Secret("<token>", identity_token=str(entry["identitytoken"]), source=src)
    if entry.get("auth"):
        try:
            text = base64.b64decode(str(entry["auth"])).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"docker config {path}: auths.{key}.auth: not base64 "
                                  "'user:password'", hint="log in again or fix the entry"
                                  ) from exc
        user, _, password = text.partition(":")
        return Secret(user, password, source=src)
    if entry.get("username"):
        return Secret(str(entry["username"]), str(entry.get("password", "")), source=src)
    return None


def run_helper(name: str, server: str) -> Secret | None:
    """``docker-credential-<name> get`` for ``server``; None when it has no credentials."""
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        raise InvalidArgument(f"credential helper docker-credential-{name}: not found on PATH",
                              hint="install it, or remove it from the docker config "
                                   "(credsStore/credHelpers), or give --user")
    try:
        p = subprocess.run([exe, "get"], input=server.encode(), capture_output=True,
                           timeout=HELPER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidArgument(f"credential helper {exe}: failed to run: {exc}") from exc
    if p.returncode != 0:
        return None  # "credentials not found in native keychain": anonymous, as docker does
    try:
        doc = json.loads(p.stdout)
        user, secret = str(doc["Username"]), str(doc["Secret"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"credential helper {exe}: answer for {server} is not "
                              "{\"Username\", \"Secret\"} JSON") from exc
    src = f"helper docker-credential-{name}"
    if user == "<token>":
        return Secret(user, identity_token=secret, source=src)
    return Secret(user, secret, source=src)
