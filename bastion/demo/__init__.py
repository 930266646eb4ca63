"""The demo stack and its real parts (OpenSSH sshd targets, child processes); tests use it too."""
