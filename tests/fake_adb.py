"""A fake adb server on 127.0.0.1 that speaks the adb host protocol well enough for adbutils:
host:version, host:devices(-l), host:transport:<serial>, host:tport:serial:<serial>, shell:<cmd>, sync: (STAT/SEND/RECV/QUIT).

Its one "device" is a temporary folder: device paths under /data/local/tmp land in <root>/data/local/tmp, and
shell commands run in bash on this machine (with those paths rewritten), so the host-built runner really runs.
`vanish_on` makes the device disappear when a shell command containing that text starts, `hang_on` makes such a
command never answer, `flaky_sends` drops that many pushes mid-transfer (for failure, timeout and retry tests).
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path


class FakeAdbServer:
    def __init__(self, root: Path, serial: str = "FAKE0001", abi: str = "x86_64"):
        self.root = Path(root)
        self.serial = serial
        self.abi = abi
        self.online = True
        self.vanish_on: str | None = None
        self.hang_on: str | None = None  # a shell command containing this never answers (timeout tests)
        self.flaky_sends = 0  # this many SENDs are dropped mid-transfer (retry tests)
        self.sends = 0
        self.commands: list[str] = []
        (self.root / "data/local/tmp").mkdir(parents=True, exist_ok=True)
        bin_dir = self.root / "system/bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        getprop = bin_dir / "getprop"
        getprop.write_text(f'#!/bin/sh\ncase "$1" in ro.product.cpu.abi) echo {abi};; ro.product.model) echo FakePhone;; esac\n')
        getprop.chmod(0o755)
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                server._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._tcp = Server(("127.0.0.1", 0), Handler)  # free port chosen by the OS, loopback only
        self.port = self._tcp.server_address[1]
        self._thread = threading.Thread(target=self._tcp.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._tcp.shutdown()
        self._tcp.server_close()

    # ---- mapping the device into the temporary folder ----
    def local(self, device_path: str) -> Path:
        return self.root / device_path.lstrip("/")

    def _rewrite(self, cmd: str) -> str:
        return cmd.replace("/data/local/tmp", str(self.root / "data/local/tmp"))

    # ---- protocol ----
    @staticmethod
    def _recv_exact(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("client closed")
            buf += chunk
        return buf

    def _read_request(self, conn) -> str:
        length = int(self._recv_exact(conn, 4), 16)
        return self._recv_exact(conn, length).decode()

    @staticmethod
    def _okay(conn, payload: str | None = None):
        msg = b"OKAY"
        if payload is not None:
            data = payload.encode()
            msg += f"{len(data):04x}".encode() + data
        conn.sendall(msg)

    @staticmethod
    def _fail(conn, why: str):
        data = why.encode()
        conn.sendall(b"FAIL" + f"{len(data):04x}".encode() + data)

    def _serve(self, conn: socket.socket):
        try:
            while True:
                req = self._read_request(conn)
                if req == "host:version":
                    return self._okay(conn, "0029")
                if req in ("host:devices", "host:devices-l"):
                    line = f"{self.serial}\tdevice\n" if self.online else ""
                    return self._okay(conn, line)
                if req.startswith("host:tport:serial:"):  # adb >= 41: OKAY + 8-byte transport id
                    if req.split(":", 3)[3] != self.serial or not self.online:
                        return self._fail(conn, "device not found")
                    conn.sendall(b"OKAY" + struct.pack("<Q", 1))
                    continue
                if req.startswith("host:transport:") or req.startswith("host-serial:"):
                    serial = req.split(":")[2] if req.startswith("host:transport:") else req.split(":")[1]
                    if serial != self.serial or not self.online:
                        return self._fail(conn, f"device '{serial}' not found")
                    if req.startswith("host-serial:"):
                        return self._fail(conn, "unsupported")
                    self._okay(conn)
                    continue  # the next request on this connection goes to the device
                if req.startswith("shell:"):
                    return self._shell(conn, req[len("shell:"):])
                if req == "sync:":
                    self._okay(conn)
                    return self._sync(conn)
                return self._fail(conn, f"unsupported request {req!r}")
        except (ConnectionError, OSError):
            return

    def _shell(self, conn, cmd: str):
        self.commands.append(cmd)
        if self.vanish_on and self.vanish_on in cmd:
            self.online = False  # unplugged mid-run: drop the stream without an exit code
            conn.close()
            return
        self._okay(conn)
        if self.hang_on and self.hang_on in cmd:
            time.sleep(30)
            return
        env = dict(os.environ, PATH=f"{self.root / 'system/bin'}:{os.environ.get('PATH', '')}")
        proc = subprocess.run(["bash", "-c", self._rewrite(cmd)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              cwd=self.root, env=env)
        conn.sendall(proc.stdout)
        conn.close()

    def _sync(self, conn):
        while True:
            cmd = self._recv_exact(conn, 4).decode()
            n = struct.unpack("<I", self._recv_exact(conn, 4))[0]
            arg = self._recv_exact(conn, n).decode() if cmd != "QUIT" else ""
            if cmd == "QUIT":
                return
            if cmd == "STAT":
                p = self.local(arg)
                if p.exists():
                    st = p.stat()
                    conn.sendall(b"STAT" + struct.pack("<III", st.st_mode, st.st_size, int(st.st_mtime)))
                else:
                    conn.sendall(b"STAT" + struct.pack("<III", 0, 0, 0))
            elif cmd == "SEND":
                path, _, mode = arg.rpartition(",")
                self.sends += 1
                if self.flaky_sends > 0:
                    self.flaky_sends -= 1
                    conn.close()  # cable glitch: the transfer dies, the device stays listed
                    return
                target = self.local(path)
                data = bytearray()
                while True:
                    kind = self._recv_exact(conn, 4)
                    size = struct.unpack("<I", self._recv_exact(conn, 4))[0]
                    if kind == b"DONE":
                        break
                    data += self._recv_exact(conn, size)
                if not target.parent.is_dir():
                    msg = f"remote couldn't create file: {path}".encode()
                    conn.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
                    continue
                target.write_bytes(data)
                target.chmod(stat.S_IMODE(int(mode)))
                conn.sendall(b"OKAY" + struct.pack("<I", 0))
            elif cmd == "RECV":
                p = self.local(arg)
                if not p.is_file():
                    msg = f"remote object '{arg}' does not exist".encode()
                    conn.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
                    continue
                data = p.read_bytes()
                for i in range(0, len(data), 64 * 1024):
                    chunk = data[i:i + 64 * 1024]
                    conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                conn.sendall(b"DONE" + struct.pack("<I", 0))
            else:
                msg = f"unknown sync command {cmd}".encode()
                conn.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
                return
