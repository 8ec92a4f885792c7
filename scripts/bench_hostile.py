#!/usr/bin/env python3
"""Load for scripts/bench-hostile.sh (issue 13, point 5): one attacker process, one
legitimate client, against an API on loopback.

  bench_hostile.py attack BASE SECONDS   idle sockets + join flood + signal flood
  bench_hostile.py legit BASE N LABEL    N calls (call/user) and /rtc joins, timed

The attacker binds its sockets to other loopback addresses (127.0.1.x for the idle
sockets, 127.0.2.x for the floods) so the per-address cap (DAPI_RTC_SOCKETS_PER_IP) is
exercised as it would be by many hosts; the legitimate client stays on 127.0.0.1. All
traffic stays on loopback and every loop is bounded in time.
"""

import asyncio
import json
import os
import signal
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

APP = None  # learnt from the first call/user answer


# ---------------------------------------------------------------- minimal HTTP/1.1


class Http:
    """One keep-alive HTTP/1.1 connection posting JSON."""

    def __init__(self, host, port, local=None):
        self.host, self.port, self.local = host, port, local
        self.r = self.w = None

    async def post(self, path, body, forwarded_for=None):
        data = json.dumps(body).encode()
        extra = f"x-forwarded-for: {forwarded_for}\r\n" if forwarded_for else ""
        for attempt in (0, 1):
            try:
                if self.w is None:
                    self.r, self.w = await asyncio.open_connection(
                        self.host, self.port, local_addr=self.local
                    )
                self.w.write(
                    f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n"
                    f"content-type: application/json\r\n{extra}content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await self.w.drain()
                status = int((await self.r.readline()).split()[1])
                length = 0
                while True:
                    line = await self.r.readline()
                    if line in (b"\r\n", b""):
                        break
                    k, _, v = line.decode().partition(":")
                    if k.lower() == "content-length":
                        length = int(v)
                payload = await self.r.readexactly(length)
                return status, json.loads(payload or b"null")
            except (ConnectionError, asyncio.IncompleteReadError, IndexError):
                self.w = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def split(base):
    hostport = base.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


async def new_call(http, caller, callee, forwarded_for=None):
    global APP
    s, v = await http.post("/dapi/call/user", {"src_uid": caller, "dst_uid": [callee]}, forwarded_for)
    if s != 200:
        raise RuntimeError(f"call/user {s}: {v}")
    APP = v["data"]["appID"]
    return v["data"]["channel"], v["data"]["token"]


async def token(http, channel, uid):
    s, v = await http.post("/dapi/call/token", {"uid": uid, "channel": channel})
    if s != 200:
        raise RuntimeError(f"call/token {s}: {v}")
    return v["data"]["token"]


def join_msg(channel, uid, tok):
    return json.dumps({"type": "join", "appID": APP, "channel": channel, "uid": uid, "token": tok})


# ---------------------------------------------------------------- attacker


async def attack(base, seconds):
    host, port = split(base)
    url = base.replace("http://", "ws://") + "/rtc"
    deadline = time.monotonic() + seconds
    stats = {
        "idle_open": 0, "idle_opened": 0, "idle_refused_429": 0, "idle_refused_503": 0,
        "idle_closed_by_server": 0, "joins_ok": 0, "joins_refused": 0,
        "flood_rounds": 0, "flood_signals_sent": 0, "flood_cut_off": 0,
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def running():
        return not stop.is_set() and time.monotonic() < deadline

    # 5,000 idle sockets: 50 addresses x 100 (the default per-address cap), each
    # reconnecting when the server closes it (join deadline); one extra per address
    # probes the cap.
    async def idle(addr, extra):
        while running():
            try:
                async with connect(url, local_addr=(addr, 0), open_timeout=10,
                                   ping_interval=None, max_queue=4) as ws:
                    stats["idle_opened"] += 1
                    stats["idle_open"] += 1
                    try:
                        # Idle: no polling loop in this process (5,000 sockets woken every
                        # second cost the attacker a core that the API then lacks). The
                        # library still answers the server's pings; the run's end cancels.
                        await ws.wait_closed()
                        stats["idle_closed_by_server"] += 1
                    finally:
                        stats["idle_open"] -= 1
            except InvalidStatus as e:
                code = e.response.status_code
                stats[f"idle_refused_{code}"] = stats.get(f"idle_refused_{code}", 0) + 1
                await asyncio.sleep(1 if extra else 0.2)
            except (OSError, asyncio.TimeoutError, ConnectionClosed):
                await asyncio.sleep(0.2)

    http = Http(host, port, local=("127.0.2.1", 0))
    evil, evil_token = await new_call(http, "mallory", "eve")

    async def join_flood(i):
        addr = f"127.0.2.{2 + i}"
        while running():
            try:
                async with connect(url, local_addr=(addr, 0), open_timeout=10) as ws:
                    await ws.send(join_msg(evil, "mallory", evil_token))
                    m = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
                    if m["type"] == "joined":
                        stats["joins_ok"] += 1
                        await ws.send('{"type":"leave"}')
                    else:
                        stats["joins_refused"] += 1
            except InvalidStatus as e:
                # DAPI_RTC_UPGRADES_PER_IP_PER_SEC: refused before the handshake
                key = f"join_upgrades_refused_{e.response.status_code}"
                stats[key] = stats.get(key, 0) + 1
                await asyncio.sleep(0.05)
            except (OSError, asyncio.TimeoutError, ConnectionClosed):
                await asyncio.sleep(0.05)

    async def signal_flood(i):
        big = "x" * (64 * 1024 - 200)
        k = 0
        while running():
            k += 1
            a, b = f"flood-{i}-{k}", f"sink-{i}-{k}"
            try:
                ch, ta = await new_call(http, a, b)
                tb = await token(http, ch, b)
                addr = f"127.0.2.{100 + i}"
                # The sink never reads (max_queue 1): its server-side queue fills up.
                async with connect(url, local_addr=(addr, 0), max_queue=1, ping_interval=None) as sink, \
                        connect(url, local_addr=(addr, 0), ping_interval=None) as src:
                    await sink.send(join_msg(ch, b, tb))
                    await src.send(join_msg(ch, a, ta))
                    await asyncio.wait_for(src.recv(), timeout=10)  # joined
                    frame = json.dumps({"type": "signal", "to": b,
                                        "description": {"type": "offer", "sdp": big}})
                    stats["flood_rounds"] += 1
                    try:
                        for _ in range(400):
                            if not running():
                                break
                            await asyncio.wait_for(src.send(frame), timeout=5)
                            stats["flood_signals_sent"] += 1
                        await asyncio.wait_for(src.recv(), timeout=5)
                        while True:
                            await asyncio.wait_for(src.recv(), timeout=5)
                    except ConnectionClosed:
                        stats["flood_cut_off"] += 1
            except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidStatus, RuntimeError):
                await asyncio.sleep(0.1)

    tasks = []
    for a in range(50):
        for _ in range(100):
            tasks.append(asyncio.create_task(idle(f"127.0.1.{a + 1}", False)))
        tasks.append(asyncio.create_task(idle(f"127.0.1.{a + 1}", True)))
    for i in range(8):
        tasks.append(asyncio.create_task(join_flood(i)))
    for i in range(2):
        tasks.append(asyncio.create_task(signal_flood(i)))

    async def report():
        ready = False
        while running():
            await asyncio.sleep(1)
            if not ready and stats["idle_open"] >= 4900:
                ready = True
                print("READY", flush=True)
            print("ATTACK", json.dumps({**stats, "t": round(time.time(), 3)}), flush=True)

    rep = asyncio.create_task(report())
    while running():
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rep.cancel()
    print("ATTACK-FINAL", json.dumps(stats), flush=True)


# ---------------------------------------------------------------- legitimate client


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def legit(base, n, label):
    host, port = split(base)
    url = base.replace("http://", "ws://") + "/rtc"
    http = Http(host, port)
    call_ms, join_ms = [], []
    slow = []  # (ms, what, wall clock at the start): to line the outliers up with the attack
    held = []  # (ws, reader task)
    dropped = []

    async def watch(ws, uid):
        try:
            async for raw in ws:
                m = json.loads(raw)
                if m["type"] in ("error", "kicked"):
                    dropped.append((uid, m))
                    return
        except ConnectionClosed as e:
            dropped.append((uid, f"closed {e.rcvd.code if e.rcvd else None}"))
            return
        # ended without a close frame from us: the server closed it
        dropped.append((uid, "closed by server"))

    stamp = int(time.time() * 1000) % 10_000_000
    for i in range(n):
        caller = f"legit-{label}-{stamp}-{i}"
        t0, w0 = time.perf_counter(), time.time()
        # Legitimate users are many hosts: behind the API's trusted proxy (127.0.0.1), each
        # caller's request carries its own address, so the per-address limits stay on.
        addr = f"10.1.{i // 250}.{i % 250 + 1}"
        ch, tok = await new_call(http, caller, f"friend-{i}", addr)
        call_ms.append((time.perf_counter() - t0) * 1000)
        slow.append((call_ms[-1], "call_user", w0))
        t0, w0 = time.perf_counter(), time.time()
        # the socket too comes through the proxy with the caller's address
        ws = await connect(url, open_timeout=10, additional_headers={"X-Forwarded-For": addr})
        await ws.send(join_msg(ch, caller, tok))
        m = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        join_ms.append((time.perf_counter() - t0) * 1000)
        slow.append((join_ms[-1], "rtc_join", w0))
        if m["type"] != "joined":
            raise RuntimeError(f"legit join refused: {m}")
        held.append((ws, asyncio.create_task(watch(ws, caller))))
        # Keep the 40 newest calls' sockets open; leave the oldest (not a drop).
        if len(held) > 40:
            old, task = held.pop(0)
            task.cancel()
            await old.send('{"type":"leave"}')
            await old.close()
        await asyncio.sleep(0.02)
    # The held sockets are still there a moment later.
    await asyncio.sleep(2)
    still = sum(1 for ws, t in held if not t.done())
    for ws, t in held:
        t.cancel()
        try:
            await ws.send('{"type":"leave"}')
            await ws.close()
        except ConnectionClosed:
            pass
    print("LEGIT", json.dumps({
        "label": label, "n": n,
        "call_user_p50_ms": round(pct(call_ms, 50), 2), "call_user_p99_ms": round(pct(call_ms, 99), 2),
        "rtc_join_p50_ms": round(pct(join_ms, 50), 2), "rtc_join_p99_ms": round(pct(join_ms, 99), 2),
        "held_at_end": len(held), "held_open": still, "dropped": len(dropped),
        "drops": [str(d) for d in dropped[:5]],
        "slowest": [f"{what} {ms:.1f} ms at {w:.3f}" for ms, what, w in sorted(slow, reverse=True)[:6]],
    }), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "attack":
        asyncio.run(attack(sys.argv[2], float(sys.argv[3])))
    elif mode == "legit":
        asyncio.run(legit(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")
