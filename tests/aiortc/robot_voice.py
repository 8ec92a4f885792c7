"""The robot that hears and is steered, from an aiortc app (docs/recordings.md,
docs/robot-control.md). Reuses robot_listener.py's /rtc client.

    robot_voice.py --base URL voicemail --fixture speech.wav [--greeting NAME]
        POST call/robot with "record": the robot greets and beeps; once its audio stops
        (no packet for 300 ms) the app speaks the fixture (sendrecv, 20 ms frames), then
        stops sending. The robot stops on silence, uploads and leaves; the app lists the
        channel's recordings, downloads the one of its uid, decodes it with ffmpeg and
        compares it with the fixture (FFT cross-correlation after alignment, length).

    robot_voice.py --base URL control --audio NAME --short NAME [--rounds N] [--marks N]
        POST call/robot with a looping NAME; once the audio flows:
        - N pause/resume rounds: the time from each request (and from its answer) to the
          first packet of the resumed audio, and the packets that still came more than
          20 ms after a pause was answered;
        - M marks with random clears: each round appends the short asset, queues a mark,
          and (at random) clears after 0-250 ms; then waits for the short item to be over.
          The packets that arrived in each round's window show what was heard: a mark
          reported `played` whose round did not deliver the whole short item is a lie, as
          is a mark reported `cleared` whose item was heard whole before the clear, or a
          mark reported twice or never.

Prints one JSON object on stdout. Nothing here prints SDP, candidates or tokens.
"""

import argparse
import asyncio
import fractions
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import websockets
from aiortc import RTCSessionDescription, rtcrtpreceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import robot_listener  # noqa: E402  (the /rtc client, the fixture comparison)
from robot_listener import Listener, compare, log, post, read_wav, upsample_fft  # noqa: E402

# Every RTP packet from the robot: (arrival time, payload size).
ARRIVALS = []
_inner = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet


async def _record_rtp(self, packet, *args, **kwargs):
    ARRIVALS.append((time.monotonic(), len(packet.payload)))
    return await _inner(self, packet, *args, **kwargs)


rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = _record_rtp


class FixtureTrack(MediaStreamTrack):
    """The app's microphone: nothing until `go`, then the fixture in 20 ms frames on time,
    then the end of the track (the app stops sending)."""

    kind = "audio"

    def __init__(self, pcm48):
        super().__init__()
        self.pcm = np.clip(pcm48 * 32767, -32768, 32767).astype("<i2")
        self.go = asyncio.Event()
        self.i = 0
        self.start = None
        self.sent_at = None

    async def recv(self):
        await self.go.wait()
        if self.start is None:
            self.start = time.monotonic()
            self.sent_at = time.time()
        n = 960
        if self.i * n >= len(self.pcm):
            self.stop()
            raise MediaStreamError
        due = self.start + self.i * 0.02
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self.pcm[self.i * n:(self.i + 1) * n]
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), dtype="<i2")])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.i * n
        frame.time_base = fractions.Fraction(1, 48000)
        self.i += 1
        return frame


class Speaker(Listener):
    """A Listener whose connection to the robot also sends `track`."""

    def __init__(self, base, uid, track):
        super().__init__(base, uid)
        self.track = track

    async def offer(self):
        self.offered = True
        if self.pc is not None:
            await self.pc.close()
        self.pc = self.new_pc()
        self.pc.addTrack(self.track)  # sendrecv
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send_local()

    async def on_signal(self, msg):
        d = msg.get("description")
        if d is not None and d["type"] == "offer":
            if self.pc is None:
                self.pc = self.new_pc()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=d["sdp"], type="offer"))
            if self.pc.getSenders() and all(s.track is None for s in self.pc.getSenders()):
                self.pc.addTrack(self.track)  # the robot's transceiver becomes sendrecv
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.send_local()
            return
        await super().on_signal(msg)


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


async def acontrol(base, channel, uid, action, **fields):
    """POST /dapi/robot/control from a thread (the event loop keeps receiving RTP meanwhile)."""
    body = {"channel": channel, "uid": uid, "action": action, **fields}
    return await asyncio.to_thread(post, base, "robot/control", body)


def decode(ogg_bytes):
    """The recording as mono float at 48 kHz, decoded by ffmpeg (libopus)."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "rec.opus")
        dst = os.path.join(d, "rec.wav")
        with open(src, "wb") as f:
            f.write(ogg_bytes)
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", src, "-ac", "1", "-ar", "48000", dst],
            check=True,
        )
        x, rate = read_wav(dst)
        assert rate == 48000
        return x


async def joined(app, creds):
    url = app.base.replace("http://", "ws://") + "/rtc"
    ws = await websockets.connect(url)
    app.ws = ws
    await app.send({"type": "join", "appID": creds["appID"], "channel": creds["channel"], "uid": creds["uid"], "token": creds["token"]})
    reader = asyncio.ensure_future(app.read())
    await asyncio.wait_for(app.connected.wait(), 20)
    return ws, reader


async def hang_up(app, ws, reader):
    app.stopping = True
    reader.cancel()
    for t in app.tasks:
        t.cancel()
    if app.pc is not None:
        await app.pc.close()
    await ws.close()


async def voicemail(a):
    ref, rate = read_wav(a.fixture)
    pcm48 = upsample_fft(ref, 48000 // rate)
    track = FixtureTrack(pcm48)
    app = Speaker(a.base, a.uid, track)
    body = {"src_uid": a.uid, "record": {"max_seconds": 60, "silence_seconds": a.silence, "beep": True}}
    if a.greeting:
        body["audio"] = a.greeting
    creds = post(a.base, "call/robot", body)
    channel = creds["channel"]
    ws, reader = await joined(app, creds)
    result = {"channel": channel}
    try:
        # the greeting and the beep: speak once the robot has been quiet for 300 ms
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if ARRIVALS and time.monotonic() - ARRIVALS[-1][0] > 0.3:
                break
        result["greeting_packets"] = len(ARRIVALS)
        track.go.set()
        await asyncio.wait_for(app.left_event.wait(), a.max_seconds)
        result["robot_left_reason"] = app.robot_left_reason
        result["spoken_ms"] = len(pcm48) / 48.0
        result["left_after_speech_ms"] = (app.robot_left - track.start) * 1000 - len(pcm48) / 48.0
        await app.send({"type": "leave"})
    finally:
        await hang_up(app, ws, reader)
    recs = get_json(f"{a.base}/dapi/call/recordings?channel={channel}")["data"]
    result["recordings"] = recs
    mine = [r for r in recs if str(r["uid"]) == a.uid]
    if not mine:
        result["error"] = "no recording of the app's uid"
        return result
    rec = mine[-1]
    with urllib.request.urlopen(a.base + rec["url"], timeout=10) as r:
        ogg = r.read()
    x = decode(ogg)
    result["decoded_ms"] = len(x) / 48.0
    result["listed_ms"] = rec["duration_ms"]
    result.update(compare(x, a.fixture))
    return result


def window_counts(bounds, gap=0.07):
    """Packets of each round [bounds[k], bounds[k + 1]). The robot sends a round's item as
    one paced run (a packet every 20 ms) and nothing between rounds, so the packets are cut
    into runs at gaps over `gap` s, and each run counts for the round in which its first
    packet arrived: a run whose last packets arrive just after the next round began (a slow
    control answer, a loaded machine) is still its own round's, not a short round plus a
    stray packet in the next."""
    times = [t for t, _ in ARRIVALS if bounds[0] <= t < bounds[-1]]
    runs = []
    for t in times:
        if runs and t - runs[-1][1] <= gap:
            runs[-1][1] = t
            runs[-1][2] += 1
        else:
            runs.append([t, t, 1])
    counts = [0] * (len(bounds) - 1)
    for first, _, n in runs:
        k = max(i for i, b in enumerate(bounds[:-1]) if b <= first)
        counts[k] += n
    return counts


async def steer(a):
    app = Listener(a.base, a.uid)
    creds = post(a.base, "call/robot", {"src_uid": a.uid, "audio": a.audio, "loop": True})
    channel = creds["channel"]
    ws, reader = await joined(app, creds)
    result = {"channel": channel}
    try:
        deadline = time.monotonic() + 20
        while len(ARRIVALS) < 25 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # pause / resume
        from_req, from_answer, late_after_pause = [], [], 0
        for _ in range(a.rounds):
            await acontrol(a.base, channel, a.uid, "pause")
            t_ans = time.monotonic()
            await asyncio.sleep(0.1)
            late_after_pause += sum(1 for t, _ in ARRIVALS if t > t_ans + 0.02)
            n = len(ARRIVALS)
            t_req = time.monotonic()
            await acontrol(a.base, channel, a.uid, "resume")
            t_ans = time.monotonic()
            while len(ARRIVALS) == n and time.monotonic() < t_req + 2:
                await asyncio.sleep(0.001)
            if len(ARRIVALS) == n:
                raise RuntimeError("no audio within 2 s of resume")
            t_first = ARRIVALS[n][0]
            from_req.append((t_first - t_req) * 1000)
            from_answer.append((t_first - t_ans) * 1000)
            await asyncio.sleep(0.1)
        if from_req:
            r = np.array(from_req)
            result["resume_from_request_ms"] = {"p50": float(np.percentile(r, 50)), "p99": float(np.percentile(r, 99)), "max": float(r.max())}
            r = np.array(from_answer)
            result["resume_from_answer_ms"] = {"p50": float(np.percentile(r, 50)), "p99": float(np.percentile(r, 99)), "max": float(r.max())}
        result["packets_after_pause_answer"] = late_after_pause
        result["rounds"] = a.rounds
        # marks with random clears: from an empty queue, one short item and one mark a round
        await acontrol(a.base, channel, a.uid, "clear")
        await asyncio.sleep(0.1)
        rng = random.Random(a.seed)
        bounds, names, clears = [], [], []
        for k in range(a.marks):
            bounds.append(time.monotonic())
            t0 = time.monotonic()
            await acontrol(a.base, channel, a.uid, "play", audio=a.short, mode="append")
            name = f"m{k}"
            await acontrol(a.base, channel, a.uid, "mark", name=name)
            names.append(name)
            cleared = k > 0 and rng.random() < 0.5
            if cleared:
                await asyncio.sleep(rng.uniform(0, 0.25))
                await acontrol(a.base, channel, a.uid, "clear")
            clears.append(cleared)
            # the short item is over (or cleared) and a gap follows before the next round
            rest = t0 + a.short_ms / 1000 + 0.12 - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        await asyncio.sleep(0.3)
        bounds.append(time.monotonic())
        counts = window_counts(bounds)
        # The same cut by arrival time alone, for comparison: a run that spills into the
        # next round's window makes a round look short there.
        times = np.array([t for t, _ in ARRIVALS])
        naive = [int(np.sum((times >= lo) & (times < hi))) for lo, hi in zip(bounds, bounds[1:])]
        full = counts[0]
        tl = get_json(f"{a.base}/dapi/call/timeline?channel={channel}")["data"]
        if isinstance(tl, dict):  # {..., "entries": [...]}: the list of entries
            tl = next(v for v in tl.values() if isinstance(v, list))
        reported = {}
        twice = 0
        for e in tl:
            if e.get("kind") == "robot_mark":
                if e["detail"] in reported:
                    twice += 1
                reported[e["detail"]] = e["effect"]
        lies, never, played, cleared_n = 0, 0, 0, 0
        order = []
        lie_rounds = []
        for k, (name, n, was_cleared) in enumerate(zip(names, counts, clears)):
            eff = reported.get(name)
            if eff is None:
                never += 1
            elif eff.startswith("played"):
                played += 1
                order.append(name)
                if n < full:
                    lies += 1
                    lie_rounds.append({"round": k, "packets": n, "full": full, "effect": eff, "clear_sent": was_cleared})
            else:
                cleared_n += 1
                if not was_cleared:
                    lies += 1  # cleared although no clear was sent in its round
                    lie_rounds.append({"round": k, "packets": n, "full": full, "effect": eff, "clear_sent": was_cleared})
        marks_in_timeline = [e["detail"] for e in tl if e.get("kind") == "robot_mark" and e["effect"].startswith("played")]
        result.update({
            "marks": len(names),
            "short_item_packets": full,
            "played": played,
            "cleared": cleared_n,
            "lies": lies + twice,
            "never_reported": never,
            "reported_twice": twice,
            "played_in_order": marks_in_timeline == order,
            "clears_sent": sum(clears),
            "lie_rounds": lie_rounds[:10],
            "short_by_arrival_window_only": sum(
                1 for name, n, m in zip(names, counts, naive)
                if reported.get(name, "").startswith("played") and m < full <= n),
        })
        await app.send({"type": "leave"})
    finally:
        await hang_up(app, ws, reader)
    return result


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--uid", default="caller1")
    sub = ap.add_subparsers(dest="mode", required=True)
    v = sub.add_parser("voicemail")
    v.add_argument("--fixture", required=True)
    v.add_argument("--greeting")
    v.add_argument("--silence", type=int, default=2)
    v.add_argument("--max-seconds", type=float, default=60)
    c = sub.add_parser("control")
    c.add_argument("--audio", required=True)
    c.add_argument("--short", required=True, help="a short asset queued before each mark")
    c.add_argument("--short-ms", type=float, default=300)
    c.add_argument("--rounds", type=int, default=20)
    c.add_argument("--marks", type=int, default=20)
    c.add_argument("--seed", type=int, default=14)
    a = ap.parse_args()
    out = await (voicemail(a) if a.mode == "voicemail" else steer(a))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
