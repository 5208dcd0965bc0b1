"""Imported only by the apply workers' fork server, as a preload (`shared.apply_workers._PRELOAD`); never import
it anywhere else: importing it makes the importing process ignore SIGTERM.

A service manager stops `dualsync run` with a SIGTERM to its whole process group, the fork server included (it
already ignores SIGINT). A fork server that died of it would make every live worker look dead to the runner (a
worker's exit status reaches the runner through the fork server, which reports 255 when it is gone): the runner
would take them for crashed and start replacements while it stops, and relaunching the fork server ends the
workers it started. So the fork server ignores SIGTERM; the runner stops it, and the workers, itself.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
