"""The floor for the media bridge's latency figures (scripts/bench-robot.sh bridge): the
same two paths through a plain relay written with Python `websockets`, on loopback, in one
process: a sender puts a `media`-sized JSON message (20 ms of pcm16 at 16 kHz in base64)
every 20 ms on one socket, the relay forwards each to the other socket, the receiver notes
when it arrived.

    bridge_relay_floor.py [--messages 1500]

Prints one JSON line: {"messages": N, "p50_ms": .., "p99_ms": ..}.
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
        if role == "in":
            async for m in ws:
                await peers["out"].send(m)
        else:
            await ws.wait_closed()

    payload = base64.b64encode(bytes(640)).decode()
    lat = []
    async with serve(relay, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as tx, connect(f"ws://127.0.0.1:{port}") as rx:
            await tx.send("in")
            await rx.send("out")
            await ready.wait()

            async def receive():
                for _ in range(a.messages):
                    m = json.loads(await rx.recv())
                    lat.append((time.monotonic() - m["t"]) * 1000)

            got = asyncio.ensure_future(receive())
            start = time.monotonic()
            for k in range(a.messages):
                await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
                await tx.send(json.dumps({"event": "media", "uid": "u", "seq": k, "t": time.monotonic(), "payload": payload}))
            await got
    x = np.array(lat[50:])
    print(json.dumps({"messages": len(x), "p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99))}))


if __name__ == "__main__":
    asyncio.run(main())
