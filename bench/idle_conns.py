#!/usr/bin/env python3
"""Open N idle keep-alive HTTP/1.1 connections to 127.0.0.1:PORT and hold them.

Each connection sends one GET and reads its answer (so the server has fully
set the connection up, buffers included), then stays open and idle. Once all
are open the script prints `READY ok=<answered> open=<open>` on stdout and
waits until stdin is closed or HOLD seconds pass, then closes everything.

Bounded: at most N connections, one request each, loopback only, a time
limit on every step.

usage: idle_conns.py PORT N [HOLD_SECONDS]
"""

import select
import socket
import sys
import time


def read_answer(sock: socket.socket) -> bool:
    """Read one small HTTP answer; True when its status is 2xx."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
        if len(data) > 65536:
            return False
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    ok = lines[0].split(b" ")[1:2] in ([b"200"], [b"204"])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        body += chunk
    return ok


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    port = int(sys.argv[1])
    n = int(sys.argv[2])
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    if not 0 < n <= 50000:
        print("N must be in 1..50000", file=sys.stderr)
        return 2
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    socks = []
    answered = 0
    deadline = time.monotonic() + 120
    error = ""
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                error = " error=time-limit"
                break
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                socks.append(s)
                s.sendall(request)
                if read_answer(s):
                    answered += 1
            except OSError as err:
                error = f" error={err}"
                break
        print(f"READY ok={answered} open={len(socks)}{error}", flush=True)
        # Hold until the caller closes our stdin (or the hold time ends).
        select.select([sys.stdin], [], [], hold)
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
