"""An app that calls the robot and listens: aiortc (PyPI) joins the channel through the
documented /rtc protocol (docs/rtc-protocol.md) and records what the robot plays.

    robot_listener.py --base http://127.0.0.1:PORT [--audio NAME] [--loop]
                      [--fixture speech.wav] [--quit-after SECONDS] [--max-seconds 30]
    robot_listener.py --base ... --bench N       # N calls: POST call/robot -> first RTP packet

It POSTs /dapi/call/robot, joins the channel with the returned token, and handles both
orders: when the robot is already there (listed in `joined`) this app is the newcomer and
offers (a recvonly audio transceiver, complete SDP); when the robot comes later, it offers and
this app answers. Every decoded frame is kept (mono, 48 kHz) until the robot leaves
(`peer_left`), or --max-seconds.

--rejoin: when the /rtc socket closes (the API restarts), join again with the same token,
retrying with backoff, as an app should; the old connection to the robot is replaced on
the next offer. Without it the socket is not reopened (the media may still flow).

--fixture: the received audio is compared with the fixture, upsampled to 48 kHz by FFT
(band-limited): the best lag by FFT cross-correlation, then the normalised correlation over
the overlap. --quit-after: POST /dapi/quit/robot that many seconds after the first frame,
and time until the robot's `peer_left`.

Prints one JSON object on stdout. Nothing here prints SDP, candidates or tokens.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request
import wave

import aioice.ice
import numpy as np
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc import rtcrtpreceiver
from aiortc.sdp import candidate_from_sdp

# aioice leaves 127.0.0.1 out of its host candidates (../shared/notes/webrtc.md, 7.4).
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=False: ["127.0.0.1"]

ROBOT = "robot"
FIRST_RTP = {"t": None}

# The time the first RTP packet arrives, before any jitter buffer: the latency benchmark
# measures POST -> this.
_orig_handle_rtp = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet


async def _handle_rtp(self, packet, *args, **kwargs):
    if FIRST_RTP["t"] is None:
        FIRST_RTP["t"] = time.monotonic()
    return await _orig_handle_rtp(self, packet, *args, **kwargs)


rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = _handle_rtp


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


class Listener:
    """One call to the robot: the socket, one RTCPeerConnection to the robot, the recording."""

    def __init__(self, base, uid):
        self.base = base
        self.uid = uid
        self.ws = None
        self.pc = None
        self.chunks = []
        self.frames = 0
        self.first_frame = None
        self.last_frame = None
        self.robot_left = None
        self.robot_left_reason = None
        self.joined_peers = None
        self.offered = False
        self.connected = asyncio.Event()
        self.left_event = asyncio.Event()
        self.robot_leaves = 0
        self.robot_joins = 0
        self.frame_times = []
        self.tasks = []
        self.rejoins = 0
        self.stopping = False

    def new_pc(self):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                self.tasks.append(asyncio.ensure_future(self.consume(track)))

        @pc.on("connectionstatechange")
        async def on_state():
            log(f"robot connection: {pc.connectionState}")
            if pc.connectionState == "connected":
                self.connected.set()

        return pc

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            now = time.monotonic()
            if self.first_frame is None:
                self.first_frame = now
            self.last_frame = now
            self.frame_times.append(now)
            pcm = frame.to_ndarray().astype(np.float64) / 32768.0
            channels = len(frame.layout.channels)
            # packed s16: shape (1, samples * channels)
            mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.reshape(-1)
            self.chunks.append(mono)
            self.frames += 1

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def send_local(self):
        d = self.pc.localDescription
        await self.send({"type": "signal", "to": ROBOT, "description": {"type": d.type, "sdp": d.sdp}})

    async def offer(self):
        # The robot is already in the channel: we are the newcomer and offer.
        self.offered = True
        if self.pc is not None:
            await self.pc.close()
        self.pc = self.new_pc()
        self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send_local()

    async def on_signal(self, msg):
        if "description" in msg:
            d = msg["description"]
            if d["type"] == "offer":
                # The robot came after us: it offers, we answer.
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
        try:
            async for text in self.ws:
                msg = json.loads(text)
                t = msg.get("type")
                if t == "joined":
                    self.joined_peers = msg["peers"]
                    log(f"joined; peers {msg['peers']}")
                    if ROBOT in msg["peers"]:
                        await self.offer()
                elif t == "peer_joined":
                    log(f"{msg['uid']} joined")
                    if msg["uid"] == ROBOT:
                        self.robot_joins += 1
                        if self.pc is not None:
                            await self.pc.close()
                            self.pc = None
                elif t == "peer_left":
                    log(f"{msg['uid']} left ({msg['reason']})")
                    if msg["uid"] == ROBOT:
                        self.robot_leaves += 1
                        self.robot_left = time.monotonic()
                        self.robot_left_reason = msg["reason"]
                        self.left_event.set()
                elif t == "signal" and msg.get("from") == ROBOT:
                    await self.on_signal(msg)
                elif t in ("error", "kicked"):
                    log(f"{t}: {msg.get('code') or msg.get('reason')}")
        except asyncio.CancelledError:
            raise
        except websockets.ConnectionClosed as e:
            log(f"/rtc socket closed: {e}")
        except Exception as e:  # a bug here must show, not hang until the timeout
            log(f"reader failed: {type(e).__name__}: {e}")
            raise

    async def read_rejoining(self, url, join):
        # Reads until the socket closes; then, unless stopping, joins again (backoff
        # 250 ms doubling to 2 s) and reads on.
        while True:
            await self.read()
            if self.stopping:
                return
            delay = 0.25
            while not self.stopping:
                await asyncio.sleep(delay)
                try:
                    self.ws = await websockets.connect(url)
                    await self.send(join)
                    self.rejoins += 1
                    log("rejoining the channel")
                    break
                except (OSError, websockets.WebSocketException) as e:
                    log(f"rejoin failed: {type(e).__name__}")
                    delay = min(delay * 2, 2)

    async def stats(self):
        if self.pc is None:
            return {"packetsReceived": 0, "packetsLost": 0}
        report = await self.pc.getStats()
        inbound = [s for s in report.values() if s.type == "inbound-rtp"]
        return {
            "packetsReceived": sum(s.packetsReceived for s in inbound),
            "packetsLost": sum(s.packetsLost for s in inbound),
        }

    async def call(self, audio, loop, quit_after, max_seconds, stay=None, rejoin=False):
        body = {"src_uid": self.uid, "loop": loop}
        if audio:
            body["audio"] = audio
        t_post = time.monotonic()
        creds = post(self.base, "call/robot", body)
        url = self.base.replace("http://", "ws://").replace("https://", "wss://") + "/rtc"
        result = {"channel": creds["channel"]}
        join = {"type": "join", "appID": creds["appID"], "channel": creds["channel"], "uid": creds["uid"], "token": creds["token"]}
        async with websockets.connect(url) as ws:
            self.ws = ws
            await self.send(join)
            reader = asyncio.ensure_future(self.read_rejoining(url, join) if rejoin else self.read())
            try:
                await asyncio.wait_for(self.connected.wait(), 20)
                t_quit = None
                if quit_after is not None:
                    deadline = time.monotonic() + 20
                    while self.first_frame is None and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(quit_after)
                    t_quit = time.monotonic()
                    post(self.base, "quit/robot", {"channel": creds["channel"], "uid": self.uid})
                if stay is not None:
                    # Stay whatever the robot does (it may be handed over to another agent).
                    print(json.dumps({"ready": "listening", "channel": creds["channel"]}), flush=True)
                    await asyncio.sleep(stay)
                else:
                    try:
                        await asyncio.wait_for(self.left_event.wait(), max_seconds)
                    except asyncio.TimeoutError:
                        log("the robot did not leave within --max-seconds")
                await asyncio.sleep(0.2)  # the last frames still in the jitter buffer
                result.update(await self.stats())
                result.update({
                    "joined_peers": self.joined_peers,
                    "offered": self.offered,
                    "frames": self.frames,
                    "samples": int(sum(len(c) for c in self.chunks)),
                    "robot_left_reason": self.robot_left_reason,
                    "robot_leaves": self.robot_leaves,
                    "robot_joins": self.robot_joins,
                    "rejoins": self.rejoins,
                    "max_gap_ms": max((b - a for a, b in zip(self.frame_times, self.frame_times[1:])), default=0) * 1000,
                    "last_frame_age_ms": None if self.last_frame is None else (time.monotonic() - self.last_frame) * 1000,
                    "first_rtp_ms": None if FIRST_RTP["t"] is None else (FIRST_RTP["t"] - t_post) * 1000,
                    "first_frame_ms": None if self.first_frame is None else (self.first_frame - t_post) * 1000,
                    "last_frame_to_left_ms": None if (self.robot_left is None or self.last_frame is None) else (self.robot_left - self.last_frame) * 1000,
                })
                if t_quit is not None and self.robot_left is not None:
                    result["quit_to_peer_left_ms"] = (self.robot_left - t_quit) * 1000
                self.stopping = True
                try:
                    await self.send({"type": "leave"})
                except websockets.ConnectionClosed:
                    pass
            finally:
                self.stopping = True
                reader.cancel()
                for t in self.tasks:
                    t.cancel()
                if self.pc is not None:
                    await self.pc.close()
        result["duration_ms"] = result["samples"] / 48.0
        return result

    def audio(self):
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0)


def read_wav(path):
    with wave.open(path, "rb") as w:
        rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    assert width == 2, "16-bit PCM fixtures only"
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return x.reshape(-1, ch).mean(axis=1), rate


def upsample_fft(x, factor):
    """Band-limited interpolation by an integer factor (zero-padded spectrum)."""
    n = len(x)
    spec = np.fft.rfft(x)
    out = np.zeros(n * factor // 2 + 1, dtype=complex)
    out[: len(spec)] = spec
    return np.fft.irfft(out, n * factor) * factor


def compare(received, fixture_path):
    ref, rate = read_wav(fixture_path)
    if 48000 % rate != 0:
        raise ValueError(f"fixture rate {rate} does not divide 48000")
    ref = upsample_fft(ref, 48000 // rate)
    if len(received) == 0:
        return {"xcorr": 0.0, "lag_samples": None, "fixture_ms": len(ref) / 48.0}
    n = 1
    while n < len(received) + len(ref):
        n *= 2
    # c[k] = sum_t received[t + k] * ref[t]: the lag of the fixture inside the recording.
    c = np.fft.irfft(np.fft.rfft(received, n) * np.conj(np.fft.rfft(ref, n)), n)
    lags = np.concatenate([np.arange(0, len(received)), np.arange(-len(ref) + 1, 0)])
    vals = np.concatenate([c[: len(received)], c[n - len(ref) + 1:]])
    lag = int(lags[int(np.argmax(vals))])
    if lag >= 0:
        a, b = received[lag:], ref
    else:
        a, b = received, ref[-lag:]
    m = min(len(a), len(b))
    a, b = a[:m], b[:m]
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    xcorr = float(np.sum(a * b) / denom) if denom > 0 else 0.0
    return {"xcorr": xcorr, "lag_samples": lag, "fixture_ms": len(ref) / 48.0, "overlap_ms": m / 48.0}


def write_wav(path, x):
    pcm = np.clip(x * 32768.0, -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())


async def bench(base, audio, n):
    """n sequential calls; each: POST call/robot -> the first RTP packet from the robot."""
    times = []
    offered = []
    for i in range(n):
        FIRST_RTP["t"] = None
        app = Listener(base, f"bench{i}")
        t_post = time.monotonic()
        body = {"src_uid": app.uid, "loop": True}
        if audio:
            body["audio"] = audio
        creds = post(base, "call/robot", body)
        url = base.replace("http://", "ws://") + "/rtc"
        async with websockets.connect(url) as ws:
            app.ws = ws
            await app.send({"type": "join", "appID": creds["appID"], "channel": creds["channel"], "uid": creds["uid"], "token": creds["token"]})
            reader = asyncio.ensure_future(app.read())
            try:
                deadline = time.monotonic() + 20
                while FIRST_RTP["t"] is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                if FIRST_RTP["t"] is None:
                    raise RuntimeError(f"call {i}: no RTP within 20 s")
                times.append((FIRST_RTP["t"] - t_post) * 1000)
                offered.append(app.offered)
                post(base, "quit/robot", {"channel": creds["channel"], "uid": app.uid})
                await asyncio.wait_for(app.left_event.wait(), 5)
                await app.send({"type": "leave"})
            finally:
                reader.cancel()
                for t in app.tasks:
                    t.cancel()
                if app.pc is not None:
                    await app.pc.close()
    t = np.array(times)
    return {
        "calls": n,
        "p50_ms": float(np.percentile(t, 50)),
        "p95_ms": float(np.percentile(t, 95)),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "all_ms": [round(x, 1) for x in times],
        # who sent the offer: the app (the robot was there first) or the robot
        "app_offered": offered,
    }


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--uid", default="app1")
    ap.add_argument("--audio")
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--fixture")
    ap.add_argument("--quit-after", type=float)
    ap.add_argument("--max-seconds", type=float, default=30)
    ap.add_argument("--out", help="write the recording here (WAV, mono 48 kHz)")
    ap.add_argument("--stay", type=float, help="listen this many seconds whatever the robot does")
    ap.add_argument("--rejoin", action="store_true", help="join again when the /rtc socket closes")
    ap.add_argument("--bench", type=int, help="run N calls and report latency percentiles")
    a = ap.parse_args()
    if a.bench:
        print(json.dumps(await bench(a.base, a.audio, a.bench)), flush=True)
        return
    app = Listener(a.base, a.uid)
    result = await app.call(a.audio, a.loop, a.quit_after, a.max_seconds, a.stay, a.rejoin)
    rec = app.audio()
    if a.out:
        write_wav(a.out, rec)
    if a.fixture:
        result.update(compare(rec, a.fixture))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
