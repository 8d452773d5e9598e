#!/usr/bin/env python3
"""Checks examples/c/tcp_forward against a relay: runs an echo server on
127.0.0.1 as the guest-side target, starts the forwarder, opens several
connections through it at once, and checks every byte comes back.

    tcp_forward_check.py FORWARDER SOCKET [CONNECTIONS]
"""
import os
import random
import socket
import subprocess
import sys
import threading

TIMEOUT_S = 60


def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)

    def accept_loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def client(port, payload, results, index):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
            # Send in uneven pieces from a thread while reading, so both
            # directions are in flight at once.
            def send():
                view = memoryview(payload)
                while view:
                    n = random.randint(1, 50000)
                    s.sendall(view[:n])
                    view = view[n:]
                s.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            got = bytearray()
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            sender.join()
            results[index] = bytes(got) == payload or f"connection {index}: {len(got)} of {len(payload)} bytes back, equal={bytes(got) == payload}"
    except Exception as e:  # reported below
        results[index] = f"connection {index}: {e!r}"


def main():
    forwarder, sock = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    srv, guest_port = echo_server()
    proc = subprocess.Popen(
        [forwarder, sock, "0", "127.0.0.1", str(guest_port), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on 127.0.0.1:"):
        proc.kill()
        sys.exit(f"forwarder did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    rng = random.Random(1)
    payloads = [rng.randbytes(rng.choice([1, 1000, 300000, 2 * 1024 * 1024])) for _ in range(count)]
    results = [None] * count
    threads = [threading.Thread(target=client, args=(port, p, results, i)) for i, p in enumerate(payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    try:
        code = proc.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "killed after timeout"
    srv.close()
    failures = [r for r in results if r is not True]
    for f in failures:
        print(f if f else "a connection did not finish", file=sys.stderr)
    if code != 0:
        print(f"forwarder exit status {code}", file=sys.stderr)
    if failures or code != 0:
        sys.exit(1)
    print(f"{count} connections, {sum(map(len, payloads))} bytes echoed through the guest")


if __name__ == "__main__":
    main()
