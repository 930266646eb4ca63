"""The running-session registry and kill requests on both state backends (SQLite, PostgreSQL):
what one node writes, another node or the CLI sees through its own connection."""

from __future__ import annotations

from harness.state import StateBackend

from bastion.state.sessions import RunningSession, SessionRegistry


def session(session_id: str, node: str, user: str = "alice") -> RunningSession:
    return RunningSession(session_id, node, user, "web01", "deploy", "127.0.0.2", "3", 1234,
                          99.0)


def test_registry_shared_between_connections(state_backend: StateBackend) -> None:
    node_a = SessionRegistry(state_backend.open(), clock=lambda: 100.0)
    node_b = SessionRegistry(state_backend.open(), clock=lambda: 100.0)
    cli = SessionRegistry(state_backend.open(), clock=lambda: 150.0)
    node_a.register(session("s1", "node-a"))
    node_b.register(session("s2", "node-b", user="bob"))
    node_a.register(session("s1", "node-a"))  # registering again replaces, never duplicates
    assert [(s.session_id, s.node, s.user) for s in cli.running()] == [
        ("s1", "node-a", "alice"), ("s2", "node-b", "bob")]
    assert cli.get_running("s2") == session("s2", "node-b", user="bob")

    cli.request_kill("s2", "x" * 500, "carol")
    assert node_a.pending_kills("node-a") == []  # each node sees only its own sessions
    [kill] = node_b.pending_kills("node-b")
    assert (kill.session_id, kill.requested_by, len(kill.reason), kill.done) == (
        "s2", "carol", 200, None)
    node_b.mark_done("s2")
    assert node_b.pending_kills("node-b") == []
    done = cli.kill_request("s2")
    assert done is not None and done.done == 100.0

    # A repeated request replaces the reason and is pending again.
    SessionRegistry(state_backend.open(), clock=lambda: 200.0).request_kill("s2", "again", "dan")
    [again] = node_b.pending_kills("node-b")
    assert (again.reason, again.requested_by, again.requested, again.done) == (
        "again", "dan", 200.0, None)

    node_b.unregister(["s2"])
    node_a.clear_node("node-a")
    assert cli.running() == []
    assert cli.get_running("s1") is None
