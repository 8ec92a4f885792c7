"""A non-browser app on the /rtc channel: aiortc joins a call through the documented
protocol (docs/rtc-protocol.md), sends a 440 Hz tone and receives the other side's audio.

    peer.py --base http://127.0.0.1:PORT --uid py --wait        # answer a call placed to `py`
    peer.py --base http://127.0.0.1:PORT --uid py --call web    # call `web`, join first

--wait: polls POST /dapi/call/msg until a call to --uid shows up, takes a token with
POST /dapi/call/token and joins second, so it is the newcomer and sends the offer (a complete
SDP, since aiortc does not trickle). --call: places the call with POST /dapi/call/user and
joins first; the browser that answers is the newcomer, offers with trickled candidates, and
this peer answers.

Prints one JSON object on stdout: frames and energy received, connection state, inbound
RTP stats. Nothing here prints SDP, candidates or tokens.
"""

import argparse
import asyncio
import fractions
import json
import math
import sys
import time
import urllib.request

import aioice.ice
import numpy as np
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

# aioice leaves 127.0.0.1 out of its host candidates; on one machine it is the address that
# always works (docs: ../shared/notes/webrtc.md, section 7).
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=False: ["127.0.0.1"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def post(base, path, body):
    req = urllib.request.Request(
        f"{base}/dapi/{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        v = json.load(r)
    if not v.get("success"):
        raise RuntimeError(f"{path}: {v.get('error')}")
    return v["data"]


class Tone(MediaStreamTrack):
    """A 440 Hz sine at -12 dBFS, 20 ms mono frames at 48 kHz."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.rate = 48000
        self.samples = 960
        self.pts = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        # Pace on absolute deadlines.
        due = self.start + self.pts / self.rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(self.samples) + self.pts) / self.rate
        pcm = (0.25 * np.sin(2 * math.pi * 440 * t) * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, self.rate)
        self.pts += self.samples
        return frame


class Peer:
    """One RTCPeerConnection to one remote uid, and what it received."""

    def __init__(self, app, uid):
        self.app = app
        self.uid = uid
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(Tone())
        self.frames = 0
        self.energy = 0.0
        self.samples = 0
        self.connected = asyncio.Event()
        self.tasks = []
        self.trickled_in = 0  # candidates received as `signal` messages
        self.sdp_candidates_out = 0  # candidates inside the SDP we sent (no trickle)

        @self.pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                self.tasks.append(asyncio.ensure_future(self.consume(track)))

        @self.pc.on("connectionstatechange")
        async def on_state():
            log(f"peer {self.uid}: {self.pc.connectionState}")
            if self.pc.connectionState == "connected":
                self.connected.set()

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            pcm = frame.to_ndarray().astype(np.float64) / 32768.0
            channels = len(frame.layout.channels)
            self.frames += 1
            self.samples += frame.samples
            # Like Chromium's totalAudioEnergy: sum of squared samples / sample rate.
            self.energy += float(np.sum(pcm * pcm)) / channels / frame.sample_rate

    async def offer(self):
        # aiortc gathers every candidate inside setLocalDescription: a complete SDP.
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send_local()

    async def send_local(self):
        desc = self.pc.localDescription
        self.sdp_candidates_out += desc.sdp.count("a=candidate:")
        await self.app.send_description(self.uid, desc)

    async def on_description(self, d):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=d["sdp"], type=d["type"]))
        if d["type"] == "offer":
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.send_local()

    async def on_candidate(self, c):
        if c is None:
            await self.pc.addIceCandidate(None)
            return
        self.trickled_in += 1
        line = c.get("candidate") or ""
        if not line:
            return  # an empty candidate: end of candidates of one section
        cand = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
        cand.sdpMid = c.get("sdpMid")
        cand.sdpMLineIndex = c.get("sdpMLineIndex")
        await self.pc.addIceCandidate(cand)

    async def stats(self):
        report = await self.pc.getStats()
        inbound = [s for s in report.values() if s.type == "inbound-rtp"]
        return {
            "packetsReceived": sum(s.packetsReceived for s in inbound),
            "packetsLost": sum(s.packetsLost for s in inbound),
        }


class App:
    def __init__(self, base, uid):
        self.base = base
        self.uid = uid
        self.ws = None
        self.peers = {}
        self.joined = None
        self.peer_left = []

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def send_description(self, to, desc):
        await self.send({"type": "signal", "to": to, "description": {"type": desc.type, "sdp": desc.sdp}})

    def peer(self, uid):
        if uid not in self.peers:
            self.peers[uid] = Peer(self, uid)
        return self.peers[uid]

    async def run(self, call, seconds, linger, timeout):
        if call:
            creds = post(self.base, "call/user", {"src_uid": self.uid, "dst_uid": [call]})
            log(f"called {call} on {creds['channel']}")
        else:
            creds = await self.wait_for_call(timeout)
        url = self.base.replace("http://", "ws://").replace("https://", "wss://") + "/rtc"
        async with websockets.connect(url) as ws:
            self.ws = ws
            await self.send({"type": "join", "appID": creds["appID"], "channel": creds["channel"], "uid": creds["uid"], "token": creds["token"]})
            reader = asyncio.ensure_future(self.read())
            try:
                peer = await asyncio.wait_for(self.first_connected(), timeout)
                log(f"connected to {peer.uid}; receiving for {seconds} s")
                await asyncio.sleep(seconds)
                stats = await peer.stats()
                result = {
                    "channel": creds["channel"],
                    "joined_peers": self.joined["peers"],
                    "remote": peer.uid,
                    "connectionState": peer.pc.connectionState,
                    "frames": peer.frames,
                    "samples": peer.samples,
                    "energy": peer.energy,
                    "trickled_in": peer.trickled_in,
                    "sdp_candidates_out": peer.sdp_candidates_out,
                    **stats,
                }
                # Stay a little so the other side can take its own measurements.
                await asyncio.sleep(linger)
                await self.send({"type": "leave"})
            finally:
                reader.cancel()
                for p in self.peers.values():
                    for t in p.tasks:
                        t.cancel()
                    await p.pc.close()
        return result

    async def wait_for_call(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = post(self.base, "call/msg", {"uid": self.uid})
            row = next((r for r in rows if r.get("role") == "callee" and r["status"] < 2), None)
            if row:
                log(f"call from {row['src_uid']} on {row['channel']}")
                return post(self.base, "call/token", {"uid": self.uid, "channel": row["channel"]})
            await asyncio.sleep(0.5)
        raise TimeoutError("no call arrived")

    async def first_connected(self):
        while True:
            for p in list(self.peers.values()):
                if p.connected.is_set():
                    return p
            await asyncio.sleep(0.05)

    async def read(self):
        try:
            await self.read_loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must show, not hang until the timeout
            log(f"reader failed: {type(e).__name__}: {e}")
            raise

    async def read_loop(self):
        async for text in self.ws:
            msg = json.loads(text)
            t = msg.get("type")
            if t == "joined":
                self.joined = msg
                log(f"joined {msg['channel']}; peers {msg['peers']}")
                # The offer rule: the newcomer offers to every peer already present.
                for uid in msg["peers"]:
                    await self.peer(uid).offer()
            elif t == "peer_joined":
                log(f"{msg['uid']} joined")
            elif t == "peer_left":
                log(f"{msg['uid']} left ({msg['reason']})")
                self.peer_left.append(msg)
            elif t == "signal":
                p = self.peer(msg["from"])
                if "description" in msg:
                    await p.on_description(msg["description"])
                elif "candidate" in msg:
                    await p.on_candidate(msg["candidate"])
            elif t in ("error", "kicked"):
                log(f"{t}: {msg}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--uid", required=True)
    ap.add_argument("--call", help="call this uid instead of waiting for a call")
    ap.add_argument("--wait", action="store_true", help="wait for a call to --uid")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--linger", type=float, default=3, help="seconds to stay after measuring")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    result = await App(a.base, a.uid).run(a.call, a.seconds, a.linger, a.timeout)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
