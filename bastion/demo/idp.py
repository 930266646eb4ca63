"""The demo and test identity provider (node ``oidc-provider`` in bastion/demo/idp/) and a browser.

``IdpServer`` writes the provider's config (clients, accounts with groups, signing keys it
generates), starts ``node server.js`` on 127.0.0.1 and stops it by pid. ``complete_device_login``
does what a person does in a browser: open the verification URL, confirm the code, sign in,
consent (or deny), keeping cookies between requests.
"""

from __future__ import annotations

import fcntl
import http.cookiejar
import json
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from bastion.demo.procs import ManagedProcess, ProcessFailed, find_program, free_port

IDP_DIR = Path(__file__).resolve().parent / "idp"


@dataclass(frozen=True)
class IdpAccount:
    """A person the IdP can sign in, with the groups its ID tokens carry."""

    username: str
    password: str
    sub: str
    email: str
    name: str
    groups: tuple[str, ...] = ()


def demo_accounts() -> tuple[IdpAccount, ...]:
    """The default accounts: alice (ops, may reach everything in the demo) and bob (dev)."""
    return (
        IdpAccount("alice", "alice-password", "a1b2c3-alice", "alice@example.com", "Alice Ops",
                   ("ops",)),
        IdpAccount("bob", "bob-password", "d4e5f6-bob", "bob@example.com", "Bob Dev", ("dev",)),
    )


def generate_signing_key(kid: str | None = None, alg: str = "RS256") -> dict[str, Any]:
    """A fresh private JWK for the IdP to sign ID tokens with (RSA for RS256, P-256 for ES256)."""
    params: dict[str, Any] = {"kid": kid or secrets.token_hex(8), "use": "sig", "alg": alg}
    key: RSAKey | ECKey
    if alg.startswith("ES"):
        key = ECKey.generate_key("P-256", parameters=params, private=True)  # type: ignore[arg-type]
    else:
        key = RSAKey.generate_key(2048, parameters=params, private=True)  # type: ignore[arg-type]
    return dict(key.as_dict(private=True))


def ensure_node_modules() -> None:
    """Install the IdP's locked npm packages (``npm ci``) if they are missing."""
    # npm writes node_modules/.package-lock.json last, so it marks a finished install. Test
    # runs in parallel share this folder: the lock keeps one `npm ci` from deleting another's.
    marker = IDP_DIR / "node_modules" / ".package-lock.json"
    with (IDP_DIR / "package-lock.json").open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return
        npm = find_program("npm")
        if npm is None:
            raise ProcessFailed("npm is not installed: the demo IdP needs Node.js 20 and npm")
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                cwd=IDP_DIR, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ProcessFailed(f"npm ci in {IDP_DIR} failed: {result.stderr.strip()[-500:]}")


@dataclass
class IdpServer:
    """One running oidc-provider with the device flow, on a loopback port."""

    workdir: Path
    client_id: str = "bastion"
    client_secret: str | None = None
    accounts: tuple[IdpAccount, ...] = field(default_factory=demo_accounts)
    port: int = 0
    device_code_ttl: int = 600
    device_interval: int = 5
    slow_down_polls: int = 0
    id_token_ttl: int = 3600
    keys: list[dict[str, Any]] = field(default_factory=list)
    extra_clients: list[dict[str, Any]] = field(default_factory=list)
    _proc: ManagedProcess | None = None

    @property
    def issuer(self) -> str:
        """The issuer URL (also the base of every endpoint)."""
        return f"http://127.0.0.1:{self.port}"

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS the IdP publishes (public halves of its signing keys)."""
        public = []
        for jwk in self.keys:
            cls = ECKey if jwk["kty"] == "EC" else RSAKey
            public.append(dict(cls.import_key(jwk).as_dict(private=False)))
        return {"keys": public}

    def start(self) -> IdpServer:
        """Write the config and start node; returns once the IdP answers."""
        ensure_node_modules()
        if not self.port:
            self.port = free_port()
        if not self.keys:
            self.keys = [generate_signing_key()]
        self.workdir.mkdir(parents=True, exist_ok=True)
        client: dict[str, Any] = {"client_id": self.client_id}
        if self.client_secret:
            client["client_secret"] = self.client_secret
        config = {
            "issuer": self.issuer, "port": self.port,
            "clients": [client, *self.extra_clients],
            "accounts": [dict(asdict(a), groups=list(a.groups)) for a in self.accounts],
            "jwks": {"keys": self.keys},
            "device_code_ttl": self.device_code_ttl, "device_interval": self.device_interval,
            "slow_down_polls": self.slow_down_polls, "id_token_ttl": self.id_token_ttl,
            "cookie_key": secrets.token_hex(16),
        }
        config_path = self.workdir / "idp-config.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        config_path.chmod(0o600)
        node = find_program("node")
        if node is None:
            raise ProcessFailed("node is not installed: the demo IdP needs Node.js 20")
        self._proc = ManagedProcess("idp", [node, str(IDP_DIR / "server.js"), str(config_path)],
                                    log_path=self.workdir / "idp.log", cwd=IDP_DIR)
        self._proc.start()
        self._proc.wait_for_log("idp listening", timeout=30)
        return self

    @property
    def process(self) -> ManagedProcess:
        """The running node process."""
        assert self._proc is not None, "IdP not started"
        return self._proc

    @property
    def pid(self) -> int:
        """The node process id."""
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        """Stop node (by its pid's process group)."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def restart(self, keys: list[dict[str, Any]] | None = None) -> None:
        """Stop and start again on the same port, optionally with new signing keys."""
        self.stop()
        if keys is not None:
            self.keys = keys
        self.start()

    def polls(self) -> list[dict[str, Any]]:
        """Every token-endpoint poll of a device code so far: {device_code, at, answer}."""
        with urllib.request.urlopen(self.issuer + "/_test/polls", timeout=5) as resp:  # noqa: S310
            data: list[dict[str, Any]] = json.load(resp)
        return data

    def __enter__(self) -> IdpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the browser stand-in -----------------------------------------------------------------

@dataclass
class _Form:
    id: str | None
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    """Collects forms, their inputs and the named buttons that submit them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.title = ""
        self.ids: set[str] = set()
        self._current: _Form | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "title":
            self._in_title = True
        elif tag == "form":
            self._current = _Form(a.get("id"), a.get("action", ""), a.get("method", "get").lower())
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current.fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and a.get("name"):
            target = self._current
            if a.get("form"):
                target = next((f for f in self.forms if f.id == a["form"]), target)
            if target is not None:
                target.buttons.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


class DeviceLoginFailed(ProcessFailed):
    """The browser stand-in could not get through the IdP's pages."""


def complete_device_login(verification_uri_complete: str, username: str, password: str,
                          approve: bool = True, max_steps: int = 12) -> None:
    """Finish a device login at the IdP as a person in a browser would (approve or deny)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    url, data = verification_uri_complete, None
    for _ in range(max_steps):
        request = urllib.request.Request(url, data=data)  # noqa: S310 (http from the IdP)
        try:
            with opener.open(request, timeout=10) as resp:
                html, url = resp.read().decode("utf-8", "replace"), resp.geturl()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:300]
            raise DeviceLoginFailed(f"IdP answered {exc.code} for {exc.url}: {body}") from None
        page = _FormParser()
        page.feed(html)
        if "done" in page.ids:
            if not approve:
                raise DeviceLoginFailed("the IdP signed the user in although they denied")
            return
        form, fields = _next_form(page, username, password, approve)
        if form is None:
            if not approve:
                return  # denied: the IdP shows its "interrupted" or error page
            raise DeviceLoginFailed(f"unexpected IdP page {page.title!r} at {url}")
        url = urllib.parse.urljoin(url, form.action)
        data = urllib.parse.urlencode(fields).encode()
    raise DeviceLoginFailed(f"device login did not finish within {max_steps} pages")


def _next_form(page: _FormParser, username: str, password: str,
               approve: bool) -> tuple[_Form | None, list[tuple[str, str]]]:
    """Pick the form a person would submit on this page, with the values they would enter."""
    by_action = {f.action.rsplit("/", 1)[-1]: f for f in page.forms}
    if "login" in by_action:
        if "error" in page.ids:
            raise DeviceLoginFailed("the IdP refused the user name or password")
        return by_action["login"], [("username", username), ("password", password)]
    if "confirm" in by_action and "abort" in by_action:
        form = by_action["confirm"] if approve else by_action["abort"]
        return form, list(form.fields)
    for form in page.forms:
        names = {name for name, _ in form.fields}
        if form.id == "op.deviceInputForm":
            return None, []  # back at "enter the code": the IdP refused or the user denied
        if form.id == "op.deviceConfirmForm":
            return form, list(form.fields)
        if {"xsrf", "user_code"} <= names and form.method == "post":
            return form, list(form.fields)  # the auto-submitting form_post page
    return None, []
