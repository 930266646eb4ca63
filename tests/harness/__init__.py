"""Helpers for end-to-end tests: OpenSSH command lines, sshd targets, a tmux screen driver."""
