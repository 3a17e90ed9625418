"""A loopback HTTP upstream that records request heads and answers each connection once."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Recorder:
    """A loopback upstream that records each request head and answers with ``answer``
    (by default 200 with the request target as its body), closing after each."""

    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    heads: list[bytes] = field(default_factory=list)
    answer: bytes | None = None

    def __post_init__(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head = data.partition(b"\r\n\r\n")[0]
                    if not head:
                        continue  # a reachability probe: connected, sent nothing
                    self.heads.append(head)
                    target = head.split(b" ")[1] if head.count(b" ") >= 2 else b""
                    answer = self.answer
                    if answer is None:
                        answer = (
                            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%b"
                            % (len(target), target)
                        )
                    conn.sendall(answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
