"""The local dev stack behind `cnx-keys up` / `make up`: an embedded nats-server, an SMTP sink, the four
services and the demo API as supervised child processes, with state under `.data/`."""

from .stack import UpOptions, run_up, up

__all__ = ["UpOptions", "run_up", "up"]
