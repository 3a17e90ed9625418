"""The test harness tells its own server's listener from another process's on the same port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support.net import Listeners, listeners

LISTEN = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_a_listener_is_ours_when_the_process_or_a_descendant_holds_it() -> None:
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        port = mine.getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, "-c", LISTEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            childs = int(child.stdout.readline())
            assert listeners(port, os.getpid()) == Listeners(ours=True, others=False)
            assert listeners(childs, os.getpid()) == Listeners(ours=True, others=False)
            # Seen from the child, the parent's listener is someone else's.
            assert listeners(port, child.pid) == Listeners(ours=False, others=True)
        finally:
            child.communicate(b"")
    with socket.socket() as bound:  # bound, not listening: nobody serves there
        bound.bind(("127.0.0.1", 0))
        assert listeners(bound.getsockname()[1], os.getpid()) == Listeners(False, False)
