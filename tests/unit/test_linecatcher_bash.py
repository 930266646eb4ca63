"""The command catcher against a real bash in a local pty: the line the shell holds is judged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from catcher_harness import BashPty


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "file").write_text("x")
    return victim


async def _session(tmp_path: Path, keys: list[bytes], pause: float = 0.0) -> BashPty:
    async with BashPty(tmp_path) as sh:
        for chunk in keys:
            await sh.idle()
            sh.type(chunk)
            if pause:
                await asyncio.sleep(pause)
        await sh.sync()
        return sh


def run(tmp_path: Path, *keys: bytes, pause: float = 0.0) -> BashPty:
    return asyncio.run(_session(tmp_path, list(keys), pause))


def test_typed_denied_command_does_not_run_and_is_noted(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"rm -rf victim\r")
    assert victim.exists()
    assert ("rm -rf victim", "deny", "no-rm-rf") in sh.ctx.commands
    assert any("no-rm-rf" in n for n in sh.ctx.notices)
    assert b"\x05\x15" in sh.ctx.sent


def test_allowed_command_runs_and_is_noted(tmp_path: Path) -> None:
    sh = run(tmp_path, b"touch made-it\r")
    assert (tmp_path / "made-it").exists()
    assert ("touch made-it", "allow", None) in sh.ctx.commands


def test_harmless_mentions_run(tmp_path: Path) -> None:
    sh = run(tmp_path, b"echo rm -rf shutdown > said\r")
    assert (tmp_path / "said").read_text() == "rm -rf shutdown\n"
    assert sh.ctx.commands[0][1] == "allow"


def test_cursor_edit_makes_a_denied_line(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    # "rm -r victim", then Ctrl-A, Right x5 (after "rm -r"), type "f" -> "rm -rf victim"
    run(tmp_path, b"rm -r victim", b"\x01", b"\x1b[C" * 5, b"f", b"\r", pause=0.05)
    assert victim.exists()


def test_ctrl_u_then_retype(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"echo harmless", b"\x15", b"rm -fr victim\r", pause=0.05)
    assert victim.exists()
    assert sh.ctx.commands[-2][1] == "deny" or sh.ctx.commands[-1][1] == "deny"


def test_history_recall_is_read_from_the_screen(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    # A harmless-looking history entry is edited into a denied one via Up.
    sh = run(tmp_path, b"echo rm -rf victim\r", b"\x1b[A", b"\x01", b"\x1b[3~" * 5, b"\r",
             pause=0.1)
    assert victim.exists()
    assert ("rm -rf victim", "deny", "no-rm-rf") in sh.ctx.commands


def test_ctrl_r_search(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    # The history entry only mentions rm; Ctrl-R finds it, the user edits it into a real rm.
    sh = run(tmp_path, b"echo x; : rm -rf victim\r", b"\x12", b"x; :", b"\x1b[C", b"\x01",
             b"\x1b[3~" * 10, b"\r", pause=0.15)
    assert victim.exists()
    assert ("rm -rf victim", "deny", "no-rm-rf") in sh.ctx.commands


def test_tab_completion(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"rm -rf vic\t", b"\r", pause=0.2)
    assert victim.exists()
    assert ("rm -rf victim/", "deny", "no-rm-rf") in sh.ctx.commands


def test_no_echo_uses_the_keystrokes(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"stty -echo\r", b"rm -rf victim\r", pause=0.2)
    assert victim.exists()
    assert ("rm -rf victim", "deny", "no-rm-rf") in sh.ctx.commands


def test_multi_line_chunk_is_checked_before_any_line_runs(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"touch first\rrm -rf victim\rtouch third\r")
    assert victim.exists()
    assert not (tmp_path / "first").exists()
    assert not (tmp_path / "third").exists()
    assert any(c[1] == "deny" for c in sh.ctx.commands)


def test_bracketed_paste_lines_are_checked(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    run(tmp_path, b"\x1b[200~touch pasted\rrm -rf victim\r\x1b[201~", b"\r", pause=0.2)
    assert victim.exists()
    assert not (tmp_path / "pasted").exists()


def test_backslash_continuation_is_judged_joined(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"rm -r\\\r", b"f victim\r", pause=0.2)
    assert victim.exists()
    assert any(c[1] == "deny" and "rm -rf victim" in c[0] for c in sh.ctx.commands)


def test_prefix_ctrl_c_then_command(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"rm -rf ", b"\x03", b"touch after-c\r", pause=0.1)
    assert victim.exists()
    assert (tmp_path / "after-c").exists()
    assert ("touch after-c", "allow", None) in sh.ctx.commands


def test_wrapped_long_line(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    padding = b"./" * 45
    run(tmp_path, b"rm -rf " + padding + b"victim\r", pause=0.1)
    assert victim.exists()


def test_quoting_bypasses_are_denied(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    for line in (b"r''m -rf victim", b"\\rm -rf victim", b"$'\\x72\\x6d' -rf victim",
                 b"command rm -rf victim", b"bash -c 'rm -rf victim'", b"$(echo rm) -rf victim",
                 b"echo cm0gLXJmIHZpY3RpbQ== | base64 -d | bash"):
        sh = run(tmp_path, line + b"\r")
        assert victim.exists(), line
        verdicts = [c[1] for c in sh.ctx.commands if "sync-" not in c[0]]
        assert verdicts == ["deny"], (line, sh.ctx.commands)


def test_alternate_screen_keys_are_not_lines(tmp_path: Path) -> None:
    sh = run(tmp_path, b"printf '\\033[?1049h'; touch in-alt\r", b"touch typed-in-alt\r",
             b"printf '\\033[?1049l'\r", pause=0.2)
    assert (tmp_path / "typed-in-alt").exists()
    assert not any("typed-in-alt" in c[0] for c in sh.ctx.commands)


def test_enter_inside_ctrl_r_search(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"history -s 'rm -rf victim'\r", b"\x12", b"rm -r", b"\r", pause=0.15)
    assert victim.exists()
    assert ("rm -rf victim", "deny", "no-rm-rf") in sh.ctx.commands


def test_typeahead_after_a_denied_line_is_dropped(tmp_path: Path) -> None:
    victim = _victim(tmp_path)

    async def scenario() -> BashPty:
        async with BashPty(tmp_path) as sh:
            sh.type(b"rm -rf victim\r")
            sh.type(b"touch typed-ahead\r")  # arrives while the first line is judged
            await sh.sync()
            return sh

    sh = asyncio.run(scenario())
    assert victim.exists()
    assert not (tmp_path / "typed-ahead").exists()
    assert any("dropped" in n for n in sh.ctx.notices)


def test_open_quote_continues_and_is_judged_whole(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"echo 'a\r", b"b'; rm -rf victim\r", pause=0.2)
    assert victim.exists()
    assert any(c[1] == "deny" for c in sh.ctx.commands), sh.ctx.commands


def test_open_quote_harmless_runs(tmp_path: Path) -> None:
    sh = run(tmp_path, b"echo 'a\r", b"b' > two-lines\r", pause=0.2)
    assert (tmp_path / "two-lines").read_text() == "a\nb\n"
    assert ("echo 'a\nb' > two-lines", "allow", None) in sh.ctx.commands


def test_line_typed_ahead_without_echo_is_judged(tmp_path: Path) -> None:
    # The keys arrive before the previous command's prompt: the screen reading is junk, the
    # keystrokes are exact; a junk reading that looks incomplete must not let the line through.
    victim = _victim(tmp_path)

    async def scenario() -> BashPty:
        async with BashPty(tmp_path) as sh:
            for chunk in (b"stty -echo", b"\r", b"rm -rf victim", b"\r"):
                sh.type(chunk)
            await sh.sync()
            return sh

    sh = asyncio.run(scenario())
    assert victim.exists()
    assert ("rm -rf victim", "deny", "no-rm-rf") in sh.ctx.commands


def test_edit_and_execute_is_refused(tmp_path: Path) -> None:
    sh = run(tmp_path, b"echo hi", b"\x18\x05", pause=0.1)
    assert any("Ctrl-X Ctrl-E" in n for n in sh.ctx.notices)


def _service(tmp_path: Path) -> Any:
    from bastion.approvals.service import ApprovalService
    from bastion.approvals.store import ApprovalStore
    from bastion.audit import AuditLog
    from bastion.config.model import ApprovalsConfig
    from bastion.state.db import StateDB

    return ApprovalService(ApprovalStore(StateDB(tmp_path / "state.db")),
                           ApprovalsConfig(approver_groups=("sre",), require_totp=False,
                                           poll_interval=0.02),
                           AuditLog(None, "n", stream=None), "n")


def test_approved_line_runs_and_a_closed_channel_withdraws(tmp_path: Path) -> None:
    from bastion.approvals.service import Approver
    from bastion.approvals.store import ApprovalState

    service = _service(tmp_path)
    approver = Approver("idp|alice", "alice", ("sre",))

    async def scenario() -> tuple[BashPty, str]:
        async with BashPty(tmp_path, approvals=service) as sh:
            sh.type(b"systemctl restart x 2>/dev/null; touch ran-1\r")
            while not service.store.pending(0):
                await asyncio.sleep(0.02)
            first = service.store.pending(0)[0].id
            assert not (tmp_path / "ran-1").exists()
            service.decide(first, approver, True, "ok", None)
            await sh.sync()
            sh.type(b"systemctl stop x 2>/dev/null; touch ran-2\r")
            while len(service.store.pending(0)) < 1:
                await asyncio.sleep(0.02)
            second = service.store.pending(0)[0].id
        return sh, second  # the channel closed while the second waited

    sh, second = asyncio.run(scenario())
    assert (tmp_path / "ran-1").exists() and not (tmp_path / "ran-2").exists()
    assert [c[1] for c in sh.ctx.commands if "ran-1" in c[0]] == ["approve", "approved"]
    assert service.store.get(second).state is ApprovalState.CANCELLED


def test_keys_right_after_ctrl_c_reach_the_new_prompt(tmp_path: Path) -> None:
    # bash drops a key typed before it redraws the prompt after Ctrl-C: "Xrm -rf" would be shown
    # (and judged as the harmless "Xrm") while "rm -rf" ran. Keys after Ctrl-C wait for the prompt.
    victim = _victim(tmp_path)
    for chunks in ([b"echo x", b"\x03", b"Xrm -rf victim\r"], [b"echo x\x03Xrm -rf victim\r"]):
        async def scenario(chunks: list[bytes] = chunks) -> BashPty:
            async with BashPty(tmp_path) as sh:
                for chunk in chunks:
                    sh.type(chunk)
                await sh.sync()
                return sh

        sh = asyncio.run(scenario())
        assert victim.exists()
        assert b"Xrm: command not found" in sh.output


def test_text_before_an_ignored_ctrl_c_does_not_join_the_next_line_unseen(tmp_path: Path,
                                                                         monkeypatch: Any) -> None:
    # Under `stty intr undef -echo` bash ignores Ctrl-C and echoes nothing: it holds
    # "rm -rf victim" while the keystrokes after Ctrl-C say "victim". That line must not run.
    from bastion.relay import command_stage

    monkeypatch.setattr(command_stage, "INTERRUPT_MAX", 0.3)
    victim = _victim(tmp_path)

    async def scenario() -> BashPty:
        async with BashPty(tmp_path) as sh:
            await sh.sync()
            sh.type(b"stty intr undef -echo\r")
            await sh.sync()
            for chunk in (b"rm -rf ", b"\x03"):
                sh.type(chunk)
                await sh.idle()
            sh.type(b"victim\r")
            await sh.idle()
            sh.type(b"stty sane\r")
            await sh.sync()
            return sh

    sh = asyncio.run(scenario())
    assert victim.exists()
    assert ("victim", "refused", None) in sh.ctx.commands


def test_keys_after_ctrl_c_never_reach_bash_before_its_new_prompt(tmp_path: Path,
                                                                 monkeypatch: Any) -> None:
    # A shell too slow to answer Ctrl-C in time (the wait is 0 here): sent at once, "touch x"
    # would reach bash while it handles SIGINT, be read into the old line ("rm -rf touch x"
    # shown, and judged) and lose keys. Dropped instead, and the shell goes on cleanly.
    from bastion.relay import command_stage

    monkeypatch.setattr(command_stage, "INTERRUPT_MAX", 0.0)

    async def scenario(index: int) -> BashPty:
        async with BashPty(tmp_path) as sh:
            sh.type(b"rm -rf ")
            await sh.wait_for(b"rm -rf ")
            sh.type(b"\x03")
            sh.type(b"touch after-%d\r" % index)
            await sh.idle()
            await sh.sync()
            return sh

    for index in range(5):
        sh = asyncio.run(scenario(index))
        assert not (tmp_path / f"after-{index}").exists()
        assert not any(c[0].startswith(("rm", "touch")) for c in sh.ctx.commands)
        assert any("no new prompt after Ctrl-C" in n for n in sh.ctx.notices)


def test_a_denied_command_before_what_only_looks_unfinished_is_refused(tmp_path: Path) -> None:
    # The parser takes a trailing "[", "$", "=~" or "{a," for an unfinished line; bash runs
    # such a line at once. A denied command in it is refused at its Enter, not joined later.
    for tail in ("[", "$", "=~", "{a,", "x=$"):
        victim = _victim(tmp_path)
        sh = run(tmp_path, b"rm -rf victim; " + tail.encode() + b"\r")
        assert victim.exists(), tail
        assert any(verdict == "deny" for _, verdict, _ in sh.ctx.commands), tail


def test_a_recalled_line_under_stty_minus_echo_is_not_run_unread(tmp_path: Path) -> None:
    # Echo off, then a line recalled from history and edited: the screen shows nothing and
    # the keystrokes do not tell what the shell holds. Refused, not taken for an empty line.
    victim = _victim(tmp_path)
    sh = run(tmp_path, b"stty -echo\r", b"# rm -rf victim\r", b"\x1b[A", b"\x01",
             b"\x1b[3~" * 2, b"\r", pause=0.2)
    assert victim.exists()
    assert any(verdict == "refused" for _, verdict, _ in sh.ctx.commands), sh.ctx.commands
