"""A WebSocket client that stops reading is closed with 1013, as the spec
promises: the close frame reaches it if it reads again, and the consumer's
``websocket.disconnect`` says 1013 either way."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

import pytest

from email_stack import Layer
from ws_stack import ORIGIN, start_gateway, write_config

pytestmark = pytest.mark.e2e

CHUNK = "x" * 32768


def handshake(port: int, path: str) -> socket.socket:
    """A raw client that completes the opening handshake and then reads only when told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast once not read
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_until_close(sock: socket.socket) -> tuple[int, int]:
    """Read frames until the close frame; return (data frames read, close code)."""
    sock.settimeout(30)
    buffer = b""

    def take(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection ended without a close frame")
            buffer += chunk
        out, buffer = buffer[:n], buffer[n:]
        return out

    frames = 0
    while True:
        first, second = take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", take(8))
        payload = take(length)
        if first & 0x0F == 0x8:
            return frames, struct.unpack("!H", payload[:2])[0]
        frames += 1


async def flood_until_disconnect(layer: Layer, connect: dict, channel: str) -> dict:
    """Send replies to the connection until the gateway gives up on it; its websocket.disconnect."""
    reply = connect["reply_channel"]
    sent = 0
    while True:
        try:
            message = await asyncio.wait_for(layer.layer.receive(channel), 0.01 if sent < 5000 else 30)
        except asyncio.TimeoutError:
            await layer.send(reply, {"type": "websocket.send", "text": CHUNK})
            sent += 1
            continue
        if message["type"] == "websocket.disconnect":
            return message


@pytest.mark.parametrize("reads_again", [True, False], ids=["reads-again", "never-reads"])
async def test_client_that_stops_reading_is_closed_1013(tmp_path, redis_server, processes, reads_again):
    config, port = write_config(tmp_path, redis_server.url, send_queue=16)
    gateway = start_gateway(config, port)
    processes.append(gateway)
    layer = Layer(config)
    opening = asyncio.ensure_future(asyncio.to_thread(handshake, port, "/silent/"))
    connect = await layer.receive("websocket.nobody")
    assert connect["type"] == "websocket.connect"
    await layer.send(connect["reply_channel"], {"type": "websocket.accept"})
    sock = await opening
    try:
        flooding = asyncio.ensure_future(flood_until_disconnect(layer, connect, "websocket.nobody"))
        if reads_again:
            deadline = time.monotonic() + 60
            while "replies queued" not in gateway.log():
                assert time.monotonic() < deadline and not flooding.done(), gateway.log()
                await asyncio.sleep(0.05)
            frames, code = await asyncio.to_thread(read_until_close, sock)
            assert code == 1013
            assert frames > 0
        disconnect = await asyncio.wait_for(flooding, 60)
    finally:
        sock.close()
        await layer.close()
    assert disconnect["code"] == 1013, disconnect
    assert gateway.proc.poll() is None
    assert gateway.stop() == 0
