"""What the bench needs beyond the project: Debian's tlog and ssh-mitm from PyPI, installed here.

Each ensure_* returns the program's path, or raises Unavailable with one line saying why the
path cannot be measured (that line goes into the results instead of a number).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("BASTION_BENCH_CACHE", Path.home() / ".cache" / "bastion-bench"))


class Unavailable(Exception):
    """A compared path cannot run here; str() is the reason."""


def _run(argv: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False, stdin=subprocess.DEVNULL)


def ensure_tlog() -> str:
    """tlog-rec-session from Debian's tlog package (apt-get install as root if missing)."""
    found = shutil.which("tlog-rec-session") or _apt_install_tlog()
    _ensure_utmp()
    return found


def _ensure_utmp() -> None:
    # tlog-rec-session adds a utmp record for its pty and gives up ("Failed setting up the I/O
    # tap") when the file does not exist, as in minimal containers.
    utmp = Path("/var/run/utmp")
    if utmp.exists():
        return
    if os.geteuid() != 0:
        raise Unavailable("tlog needs /var/run/utmp, which is missing (creating it needs root)")
    utmp.touch(mode=0o664)
    with contextlib.suppress(KeyError, OSError):
        shutil.chown(utmp, group="utmp")


def _apt_install_tlog() -> str:
    if not shutil.which("apt-get"):
        raise Unavailable("no apt-get on this machine; tlog is a Debian package")
    if os.geteuid() != 0:
        raise Unavailable("tlog is not installed and installing it needs root (apt-get)")
    _run(["apt-get", "update", "-qq"])
    policy = _run(["apt-cache", "policy", "tlog"]).stdout
    if "Candidate: (none)" in policy or "Candidate:" not in policy:
        release = Path("/etc/debian_version").read_text(encoding="utf-8").strip() \
            if Path("/etc/debian_version").exists() else "unknown"
        raise Unavailable(f"Debian {release} has no tlog package (apt-cache policy tlog: "
                          "no candidate)")
    result = _run(["apt-get", "install", "-y", "-q", "tlog"])
    found = shutil.which("tlog-rec-session")
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise Unavailable(f"apt-get install tlog failed: {tail[0]}")
    return found


def ensure_ssh_mitm() -> str:
    """The ssh-mitm console script, pip-installed into its own venv under the bench cache."""
    venv = CACHE / "mitm-venv"
    program = venv / "bin" / "ssh-mitm"
    if not program.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        made = _run([sys.executable, "-m", "venv", str(venv)])
        if made.returncode != 0:
            raise Unavailable(f"cannot create a venv for ssh-mitm: {made.stderr.strip()[-200:]}")
        pip = _run([str(venv / "bin" / "pip"), "install", "-q", "ssh-mitm"])
        if pip.returncode != 0 or not program.exists():
            lines = [ln for ln in pip.stderr.splitlines() if "ERROR" in ln] or ["?"]
            raise Unavailable(f"pip install ssh-mitm failed: {lines[-1][:200]}")
    version = _run([str(program), "--version"], timeout=120)
    if version.returncode != 0:
        raise Unavailable(f"ssh-mitm does not start: {(version.stderr or version.stdout)[-200:]}")
    return str(program)


def ensure_py_spy() -> str | None:
    """py-spy (for --profile), pip-installed into the bench venv; None if it cannot be had."""
    found = shutil.which("py-spy")
    if found:
        return found
    program = CACHE / "mitm-venv" / "bin" / "py-spy"
    if not program.exists():
        pip = CACHE / "mitm-venv" / "bin" / "pip"
        if not pip.exists():
            return None
        _run([str(pip), "install", "-q", "py-spy"])
    return str(program) if program.exists() else None
