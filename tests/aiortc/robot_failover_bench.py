"""Failover benchmark (issue 11, point 3): three real robot agents, an aiortc app listening
to a looping robot, and SIGKILL of the agent holding the session, again and again.

    robot_failover_bench.py --base http://127.0.0.1:PORT --agent-bin target/release/robot-agent
                            --work DIR [--kills 20] [--agents 3]
    (DAPI_AGENT_KEY and DAPI_ADMIN_KEY in the environment)

It starts the agents (capacity 1 each, ids fo1..foN, each with its own cache directory kept
across restarts), places one call to the robot (`loop: true`) and joins it as the app. Then,
KILLS times: once the robot's audio has flowed for 2 to 4 s since the last recovery, it finds
the agent holding the session (`GET /admin/agents`), sends it SIGKILL, starts it again at once
with the same id (so N agents keep running), and waits for audio from the robot again.

Measured at the app, per kill: the gap in audio (the first RTP packet after the kill minus the
last one before it) and kill -> first packet. Checked: no session lost (the audio comes back
within 15 s every time and the session ends the run `running`), and none played by two
agents at once: the app keeps every robot peer connection open (it does not close the old one
when the robot joins again) and records the RTP arrivals of each, so audio from an old agent
after the new one started would show as an overlap; and `GET /admin/agents`, polled every
100 ms, never lists the session on two agents.

Prints one JSON object on stdout; progress on stderr. Nothing here prints SDP or tokens.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import robot_listener as rl  # noqa: E402  (patches aioice for loopback)

import numpy as np  # noqa: E402
import websockets  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc import rtcrtpreceiver  # noqa: E402
from aiortc.sdp import candidate_from_sdp  # noqa: E402

ROBOT = "robot"
# Every RTP packet from the robot: (monotonic time, receiver id), before any jitter buffer.
ARRIVALS = []
_prev_handle_rtp = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet


async def _record_rtp(self, packet, *args, **kwargs):
    ARRIVALS.append((time.monotonic(), id(self)))
    return await _prev_handle_rtp(self, packet, *args, **kwargs)


rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = _record_rtp


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def admin(base, path):
    req = urllib.request.Request(f"{base}{path}", headers={"authorization": f"Bearer {os.environ['DAPI_ADMIN_KEY']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["data"]


class Agents:
    """The robot-agent processes, restartable under the same id."""

    def __init__(self, bin_path, base, work, n):
        self.bin = bin_path
        self.base = base
        self.work = work
        self.procs = {}
        self.ids = [f"fo{i + 1}" for i in range(n)]

    def start(self, agent_id):
        cache = os.path.join(self.work, f"cache-{agent_id}")
        os.makedirs(cache, exist_ok=True)
        logf = open(os.path.join(self.work, f"{agent_id}.log"), "ab")
        env = dict(os.environ, ROBOT_LOG_FORMAT="json", RUST_LOG="info")
        self.procs[agent_id] = subprocess.Popen(
            [self.bin, "--api-url", self.base, "--capacity", "1", "--agent-id", agent_id,
             "--bind-ip", "127.0.0.1", "--cache-dir", cache, "--leave-grace", "60"],
            stdout=subprocess.DEVNULL, stderr=logf, env=env)
        logf.close()

    def kill(self, agent_id):
        p = self.procs[agent_id]
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


class App:
    """The caller: one /rtc socket, a new peer connection for each time the robot joins, the
    old ones left open so that any audio still coming from an old agent is seen."""

    def __init__(self, base):
        self.base = base
        self.ws = None
        self.pc = None
        self.pcs = []
        self.robot_joins = 0
        self.robot_leaves = []

    def new_pc(self):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)

        @pc.on("track")
        def on_track(track):
            async def drain():
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
            asyncio.ensure_future(drain())

        return pc

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def send_local(self):
        d = self.pc.localDescription
        await self.send({"type": "signal", "to": ROBOT, "description": {"type": d.type, "sdp": d.sdp}})

    async def offer(self):
        self.pc = self.new_pc()
        self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send_local()

    async def on_signal(self, msg):
        if "description" in msg:
            d = msg["description"]
            if d["type"] == "offer":
                if self.pc is None:
                    self.pc = self.new_pc()
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=d["sdp"], type="offer"))
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self.send_local()
            elif self.pc is not None:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=d["sdp"], type="answer"))
        elif "candidate" in msg and self.pc is not None:
            c = msg["candidate"]
            if c is None:
                await self.pc.addIceCandidate(None)
                return
            line = c.get("candidate") or ""
            if not line:
                return
            cand = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
            cand.sdpMid = c.get("sdpMid")
            cand.sdpMLineIndex = c.get("sdpMLineIndex")
            await self.pc.addIceCandidate(cand)

    async def read(self):
        async for text in self.ws:
            msg = json.loads(text)
            t = msg.get("type")
            if t == "joined":
                if ROBOT in msg["peers"]:
                    await self.offer()
            elif t == "peer_joined" and msg["uid"] == ROBOT:
                # A new robot: its offer gets a new connection; the old one stays open.
                self.robot_joins += 1
                self.pc = None
            elif t == "peer_left" and msg["uid"] == ROBOT:
                self.robot_leaves.append(msg["reason"])
            elif t == "signal" and msg.get("from") == ROBOT:
                await self.on_signal(msg)
            elif t in ("error", "kicked"):
                log(f"{t}: {msg.get('code') or msg.get('reason')}")


def last_before(t):
    last = None
    for at, rid in ARRIVALS:
        if at > t:
            break
        last = (at, rid)
    return last


async def wait_for(pred, secs, step=0.02):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(step)
    return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--agent-bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--agents", type=int, default=3)
    a = ap.parse_args()
    agents = Agents(a.agent_bin, a.base, a.work, a.agents)
    for i in agents.ids:
        agents.start(i)
    ok = await wait_for(lambda: len(admin(a.base, "/admin/agents")) == a.agents, 30, 0.1)
    if not ok:
        raise RuntimeError(f"{a.agents} agents did not connect")

    app = App(a.base)
    creds = rl.post(a.base, "call/robot", {"src_uid": "failover", "loop": True})
    channel = creds["channel"]
    url = a.base.replace("http://", "ws://") + "/rtc"
    holders_max = 0
    stop_poll = False

    async def poll_holders(session_id):
        nonlocal holders_max
        while not stop_poll:
            try:
                listed = await asyncio.get_running_loop().run_in_executor(None, admin, a.base, "/admin/agents")
                n = sum(1 for ag in listed if session_id in ag["sessions"])
                holders_max = max(holders_max, n)
            except Exception as e:  # the API is never down here; report it
                log(f"admin poll failed: {e}")
            await asyncio.sleep(0.1)

    kills = []
    lost = 0
    async with websockets.connect(url) as ws:
        app.ws = ws
        await app.send({"type": "join", "appID": creds["appID"], "channel": channel, "uid": creds["uid"], "token": creds["token"]})
        reader = asyncio.ensure_future(app.read())
        try:
            if not await wait_for(lambda: ARRIVALS, 20):
                raise RuntimeError("no audio from the robot within 20 s")
            sessions = admin(a.base, f"/admin/robot/sessions?channel={channel}")
            session_id = sessions[0]["id"]
            poller = asyncio.ensure_future(poll_holders(session_id))
            recovered_at = ARRIVALS[0][0]
            for k in range(a.kills):
                # Audio has flowed 2-4 s since the last recovery (and a position was reported).
                await asyncio.sleep(max(0.0, recovered_at + random.uniform(2.0, 4.0) - time.monotonic()))
                holder = None
                for ag in admin(a.base, "/admin/agents"):
                    if session_id in ag["sessions"]:
                        holder = ag["agent_id"]
                s = admin(a.base, f"/admin/robot/sessions/{session_id}")
                if holder is None or s["state"] != "running":
                    log(f"kill {k + 1}: session not held ({s['state']})")
                    lost += 1
                    break
                flowing = time.monotonic() - ARRIVALS[-1][0]
                t_kill = time.monotonic()
                agents.kill(holder)
                agents.start(holder)
                before = last_before(t_kill)
                old_rid = before[1]

                def new_audio():
                    for at, rid in reversed(ARRIVALS):
                        if at <= t_kill:
                            return None
                        if rid != old_rid:
                            first = at
                            # the earliest packet of that receiver after the kill
                            for at2, rid2 in ARRIVALS:
                                if at2 > t_kill and rid2 == rid:
                                    first = at2
                                    break
                            return first
                    return None

                first = await wait_for(new_audio, 15)
                if first is None:
                    log(f"kill {k + 1}: no audio within 15 s of killing {holder}")
                    lost += 1
                    break
                recovered_at = first
                gap = (first - before[0]) * 1000
                kills.append({
                    "holder": holder,
                    "gap_ms": round(gap, 1),
                    "kill_to_audio_ms": round((first - t_kill) * 1000, 1),
                    "position_before_ms": s["position_ms"],
                    "silent_before_kill_ms": round(flowing * 1000, 1),
                })
                log(f"kill {k + 1}/{a.kills}: {holder} at position {s['position_ms']} ms; audio gap {gap:.0f} ms")
            stop_poll = True
            await poller
            final = admin(a.base, f"/admin/robot/sessions/{session_id}")
            # Give the last holder a moment, then check the audio still flows.
            await asyncio.sleep(1.0)
            flowing_at_end = time.monotonic() - ARRIVALS[-1][0] < 0.5
        finally:
            stop_poll = True
            reader.cancel()
            agents.stop()
            for pc in app.pcs:
                await pc.close()

    # Two agents at once: a receiver that still gets audio after the next one started.
    spans = {}
    for at, rid in ARRIVALS:
        first, last, n = spans.get(rid, (at, at, 0))
        spans[rid] = (first, at, n + 1)
    ordered = sorted(spans.values())
    overlaps = [max(0.0, (prev[1] - nxt[0]) * 1000) for prev, nxt in zip(ordered, ordered[1:])]
    gaps = np.array([k["gap_ms"] for k in kills]) if kills else np.array([float("nan")])
    out = {
        "kills": len(kills),
        "gap_p50_ms": float(np.percentile(gaps, 50)),
        "gap_max_ms": float(gaps.max()),
        "kill_to_audio_p50_ms": float(np.percentile([k["kill_to_audio_ms"] for k in kills], 50)) if kills else None,
        "sessions_lost": lost + (0 if final["state"] == "running" and flowing_at_end else 1),
        "final_state": final["state"],
        "redispatches": final["redispatches"],
        "attempts": final["attempts"],
        "robot_peer_connections": len(spans),
        "max_overlap_ms": max(overlaps, default=0.0),
        "max_agents_listing_the_session": holders_max,
        "robot_joins_seen": app.robot_joins,
        "per_kill": kills,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
