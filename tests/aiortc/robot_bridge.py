"""The app of the media bridge end-to-end test (tests/tests/robot_bridge.rs): an aiortc
caller that calls a bridged robot, speaks the fixture into the channel and records what it
hears back (robot_voice.py's speaking listener).

    robot_bridge.py --base URL --bridge NAME --fixture speech.wav [--max-seconds S]

POST call/robot {"bridge": NAME}; once the robot's connection is up (and 500 ms more), the
app speaks the fixture in 20 ms frames, then stops sending. It stays until the robot leaves
(or S seconds), then prints one JSON line: every RTP packet it received from the robot
(count, arrival times), the cross-correlation of what it heard with the fixture, how often
the robot left and its connection's states. Nothing here prints SDP, candidates or tokens.
"""

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import robot_voice  # noqa: E402  (records every RTP arrival in robot_voice.ARRIVALS)
from robot_listener import compare, post, read_wav, upsample_fft  # noqa: E402
from robot_voice import ARRIVALS, FixtureTrack, Speaker, hang_up, joined  # noqa: E402


class StateLog(Speaker):
    """A Speaker that keeps its connection's states."""

    def __init__(self, *a):
        super().__init__(*a)
        self.states = []

    def new_pc(self):
        pc = super().new_pc()

        @pc.on("connectionstatechange")
        async def on_state():
            self.states.append(pc.connectionState)

        return pc


async def run(a):
    ref, rate = read_wav(a.fixture)
    track = FixtureTrack(upsample_fft(ref, 48000 // rate))
    app = StateLog(a.base, a.uid, track)
    creds = post(a.base, "call/robot", {"src_uid": a.uid, "bridge": a.bridge})
    ws, reader = await joined(app, creds)
    result = {"channel": creds["channel"]}
    try:
        await asyncio.sleep(0.5)
        track.go.set()
        result["spoke_at"] = time.monotonic()
        try:
            await asyncio.wait_for(app.left_event.wait(), a.max_seconds)
        except asyncio.TimeoutError:
            result["timed_out"] = True
        result["robot_left_reason"] = app.robot_left_reason
        result["robot_left_at"] = app.robot_left
        result["robot_leaves"] = app.robot_leaves
        # the last packets still in the jitter buffer
        await asyncio.sleep(0.3)
        await app.send({"type": "leave"})
    finally:
        await hang_up(app, ws, reader)
    result["packets"] = len(ARRIVALS)
    result["arrivals"] = [t for t, _ in ARRIVALS]
    result["states"] = app.states
    result.update(compare(app.audio(), a.fixture))
    return result


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--bridge", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--uid", default="caller1")
    ap.add_argument("--max-seconds", type=float, default=60)
    a = ap.parse_args()
    print(json.dumps(await run(a)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
