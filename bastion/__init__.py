"""bastion: an SSH session-recording bastion."""
