"""``python -m bastion``."""

from bastion.cli.main import main

main()
