"""The floor for the media bridge's latency figures (scripts/bench-robot.sh bridge): the
same two paths through a plain relay written with Python `websockets` in place of the
agent, on loopback, in one process, both directions at once as in a bridged call:

- up: a "listener" socket puts an agent-shaped `media` message (20 ms of pcm16 at 16 kHz in
  base64, with uid, seq and timestamp_ms) every 20 ms on the relay, which forwards it to
  the "program" socket;
- down: the "program" socket puts a program-shaped `media` message (the same payload) every
  20 ms on the relay, which forwards it to the "listener" socket.

Each message carries the monotonic time it was sent; the receiver notes when it arrived
(one process, one clock).

    bridge_relay_floor.py [--messages 1500]

Prints one JSON line: {"messages": N, "up": {"p50_ms", "p99_ms"}, "down": {...}}.
"""

import argparse
import asyncio
import base64
import json
import time

import numpy as np
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1500)
    a = ap.parse_args()
    peers = {}
    ready = asyncio.Event()

    async def relay(ws):
        role = await ws.recv()
        peers[role] = ws
        if len(peers) == 2:
            ready.set()
        await ready.wait()
        other = peers["program" if role == "listener" else "listener"]
        async for m in ws:
            await other.send(m)

    payload = base64.b64encode(bytes(640)).decode()

    async def run(tx, rx, shape, lat):
        async def receive():
            for _ in range(a.messages):
                m = json.loads(await rx.recv())
                lat.append((time.monotonic() - m["t"]) * 1000)

        got = asyncio.ensure_future(receive())
        start = time.monotonic()
        for k in range(a.messages):
            await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
            await tx.send(json.dumps(dict(shape(k), t=time.monotonic(), payload=payload)))
        await got

    up, down = [], []
    async with serve(relay, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as listener, connect(f"ws://127.0.0.1:{port}") as program:
            await listener.send("listener")
            await program.send("program")
            await ready.wait()
            await asyncio.gather(
                run(listener, program, lambda k: {"event": "media", "uid": "u", "seq": k, "timestamp_ms": 20 * k}, up),
                run(program, listener, lambda k: {"event": "media"}, down),
            )

    def stats(lat):
        x = np.array(lat[50:])
        return {"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99))}

    print(json.dumps({"messages": a.messages - 50, "up": stats(up), "down": stats(down)}))


if __name__ == "__main__":
    asyncio.run(main())
