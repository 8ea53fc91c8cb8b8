"""A KCP conversation with the gate's KCP door, run by skywind3000's C
ikcp (PyPI `kcp`, an implementation independent of the gate's), as a byte
pipe: stdin goes to the gate, what the gate sends comes out on stdout.

usage: kcp_pipe.py HOST PORT CONV
Exits when stdin closes and everything written was acknowledged, or after
60 s whatever happens (tests must not hang).
"""

import os
import select
import socket
import sys
import time

from kcp import KCP

host, port, conv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect((host, port))
k = KCP(conv, no_delay=True, update_interval=10, resend_count=2,
        no_congestion_control=True, send_window_size=128,
        receive_window_size=128)
k.include_outbound_handler(lambda _k, data: sock.send(bytes(data)))

stdin = sys.stdin.buffer.raw
out = sys.stdout.buffer
end = time.time() + 60
stdin_open = True
while time.time() < end:
    fds = [sock] + ([stdin] if stdin_open else [])
    ready, _, _ = select.select(fds, [], [], 0.01)
    if stdin in ready:
        data = os.read(stdin.fileno(), 4096)
        if data:
            k.enqueue(data)
            k.flush()
        else:
            stdin_open = False
    if sock in ready:
        while True:
            try:
                k.receive(sock.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
    k.update()
    got = False
    for msg in k.get_all_received():
        out.write(bytes(msg))
        got = True
    if got:
        out.flush()
    if not stdin_open:
        # Linger a moment so the last acks go out, then stop.
        end = min(end, time.time() + 1.0)
