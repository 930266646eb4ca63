"""An OpenSSH client whose device login is finished by the test, as a person in a browser would."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

URL_RE = re.compile(r"open this URL on any device:\s+(https?://\S+)\s+and enter this code:\s+(\S+)")


class SshClient:
    """``ssh`` running in the background; stderr is collected as it arrives."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={**os.environ, "LC_ALL": "C.UTF-8", **(env or {})},
            start_new_session=True)
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._pump, args=(stream, buf), daemon=True)
                         for stream, buf in ((self.proc.stdout, self._out),
                                             (self.proc.stderr, self._err))]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: object, buf: bytearray) -> None:
        assert hasattr(stream, "read1")
        while chunk := stream.read1(65536):
            with self._lock:
                buf.extend(chunk)

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode("utf-8", "replace")

    @property
    def stdout(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    def wait_for_stderr(self, pattern: str | re.Pattern[str], timeout: float = 20.0,
                        ) -> re.Match[str]:
        """Wait until stderr matches ``pattern``; fail with what was seen if it never does."""
        return self._wait_for("stderr", pattern, timeout)

    def wait_for_stdout(self, pattern: str | re.Pattern[str], timeout: float = 20.0,
                        ) -> re.Match[str]:
        """Wait until stdout matches ``pattern``; fail with what was seen if it never does."""
        return self._wait_for("stdout", pattern, timeout)

    def _wait_for(self, stream: str, pattern: str | re.Pattern[str],
                  timeout: float) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := regex.search(getattr(self, stream)):
                return m
            if self.proc.poll() is not None:
                for thread in self._threads:
                    thread.join(2)
                if m := regex.search(getattr(self, stream)):
                    return m
                raise AssertionError(f"ssh exited {self.proc.returncode} before "
                                     f"{regex.pattern!r} on {stream}; stderr:\n{self.stderr}")
            time.sleep(0.05)
        raise AssertionError(f"no {regex.pattern!r} on {stream} within {timeout}s; "
                             f"stderr:\n{self.stderr}")

    def verification_url(self, timeout: float = 20.0) -> str:
        """The URL a person would open after typing the code the bastion showed into it."""
        url, code = self.wait_for_stderr(URL_RE, timeout).groups()
        return f"{url}?user_code={code}"

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for ssh to exit; return its status."""
        try:
            code = self.proc.wait(timeout)
        finally:
            self.stop()
        for thread in self._threads:
            thread.join(2)
        return code

    def stop(self) -> None:
        """Kill ssh (by its process group) if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def askpass_env(directory: Path, answer_file: Path) -> dict[str, str]:
    """Environment making ssh answer keyboard-interactive prompts from ``answer_file``.

    The helper waits until the file has content, so a test can write the answer once it has
    read what the bastion showed (an enrollment URI, say).
    """
    script = directory / "askpass.sh"
    script.write_text(f"#!/bin/sh\nwhile [ ! -s '{answer_file}' ]; do sleep 0.05; done\n"
                      f"cat '{answer_file}'\n", encoding="utf-8")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
