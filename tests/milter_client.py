"""Just enough of the MTA side of the milter protocol (version 6) to talk to the real daemon.

Postfix is the real client (test_milter_integration.py); this one lets the daemon's own tests
check what crosses the socket, through libmilter, without a mail server.
"""

from __future__ import annotations

import socket
import struct

SMFIC_OPTNEG, SMFIC_MACRO, SMFIC_CONNECT, SMFIC_HELO = b"O", b"D", b"C", b"H"
SMFIC_MAIL, SMFIC_RCPT, SMFIC_QUIT, SMFIC_ABORT = b"M", b"R", b"Q", b"A"
SMFIP_NR_CONN, SMFIP_NR_HELO, SMFIP_NR_MAIL, SMFIP_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF


class MilterClient:
    def __init__(self, path: str, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.protocol = 0

    def _send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + cmd + data)

    def _read_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            data += chunk
        return data

    def _receive(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack("!I", self._read_exact(4))
        packet = self._read_exact(length)
        return packet[:1], packet[1:]

    def negotiate(self) -> int:
        self._send(SMFIC_OPTNEG, struct.pack("!III", 6, ALL_ACTIONS, ALL_PROTOCOL))
        cmd, data = self._receive()
        assert cmd == SMFIC_OPTNEG, cmd
        _version, _actions, self.protocol = struct.unpack("!III", data[:12])
        return self.protocol

    def _command(self, cmd: bytes, data: bytes, noreply_bit: int) -> str | None:
        self._send(cmd, data)
        if self.protocol & noreply_bit:
            return None
        reply, payload = self._receive()
        if reply == b"y":
            return payload.rstrip(b"\0").decode()
        return {b"c": "continue", b"r": "reject", b"t": "tempfail", b"a": "accept"}.get(
            reply, reply.decode()
        )

    def connect(self, ip: str = "192.0.2.10", helo: str = "mail.sender.test") -> None:
        data = b"client.test\0" + b"4" + struct.pack("!H", 40000) + ip.encode() + b"\0"
        self._command(SMFIC_CONNECT, data, SMFIP_NR_CONN)
        self._command(SMFIC_HELO, helo.encode() + b"\0", SMFIP_NR_HELO)

    def mail(self, sender: str) -> str | None:
        self._send(SMFIC_MACRO, SMFIC_MAIL + b"i\0TESTQUEUEID\0")
        return self._command(SMFIC_MAIL, f"<{sender}>".encode() + b"\0", SMFIP_NR_MAIL)

    def rcpt(self, recipient: str) -> str | None:
        return self._command(SMFIC_RCPT, f"<{recipient}>".encode() + b"\0", SMFIP_NR_RCPT)

    def close(self) -> None:
        try:
            self._send(SMFIC_QUIT)
        finally:
            self.sock.close()
