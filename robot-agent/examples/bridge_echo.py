"""An echo bot for the robot's media bridge (docs/bridge.md): it repeats what each caller
said, after a beep. A caller who speaks while it repeats interrupts it (`clear`).

    pip install websockets numpy
    python bridge_echo.py --port 9000 --secret s3cret

and on the API: DAPI_BRIDGES='{"echo": {"url": "ws://HOST:9000/", "secret": "s3cret",
"format": "pcm16", "rate": 16000}}', then `call/robot` with `"bridge": "echo"`.

An utterance is audio above a level, ended by 700 ms below it. The bot works on pcm16 at
any rate; the beep is made at the session's rate.
"""

import argparse
import asyncio
import base64
import json

import numpy as np
from websockets.asyncio.server import serve

SPEECH_RMS = 500  # 16-bit units; a quiet room is well below
END_OF_TURN_MS = 700


def beep(rate, ms=150, hz=1000.0):
    t = np.arange(rate * ms // 1000) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes()


class Caller:
    """One participant's turn: the frames of what they are saying."""

    def __init__(self):
        self.frames = []
        self.quiet_ms = 0
        self.last = 0.0
        self.before = []  # the 200 ms before speech starts (soft onsets are below the level)


async def session(ws):
    loop = asyncio.get_running_loop()
    rate = None
    callers = {}
    speaking_back = False
    turns = 0

    async def send(**m):
        await ws.send(json.dumps(m))

    async def repeat(c):
        """The caller's turn is over: a beep, then their words."""
        nonlocal speaking_back, turns
        said = b"".join(c.frames)
        c.frames, c.quiet_ms = [], 0
        turns += 1
        frame = rate // 50 * 2
        audio = beep(rate) + said
        audio += bytes((-len(audio)) % frame)  # whole 20 ms frames
        second = rate * 2  # messages of at most 1 s (the robot takes up to 256 KiB)
        for at in range(0, len(audio), second):
            # sent as fast as we have it: the robot paces the frames
            await send(event="media", payload=base64.b64encode(audio[at:at + second]).decode())
        await send(event="mark", name=f"turn-{turns}")
        speaking_back = True

    async def watch():
        """A caller whose audio simply stops (muted, hung up) has ended a turn too."""
        while True:
            await asyncio.sleep(0.1)
            for c in callers.values():
                if c.frames and loop.time() - c.last >= END_OF_TURN_MS / 1000:
                    await repeat(c)

    watcher = asyncio.ensure_future(watch())
    try:
        async for text in ws:
            m = json.loads(text)
            ev = m["event"]
            if ev == "start":
                if m["format"]["encoding"] != "pcm16":
                    print("this bot needs a pcm16 bridge")
                    await send(event="hangup")
                    return
                rate = m["format"]["rate"]
                print(f"session {m['session']} in {m['channel']} ({rate} Hz, resume {m['resume']})")
            elif ev == "participant":
                print(f"{m['uid']} {m['state']}")
                callers.pop(m["uid"], None)
            elif ev == "media":
                pcm = base64.b64decode(m["payload"])
                level = np.sqrt(np.mean(np.frombuffer(pcm, "<i2").astype(np.float64) ** 2))
                c = callers.setdefault(m["uid"], Caller())
                if level > SPEECH_RMS:
                    if speaking_back:
                        await send(event="clear")  # barge-in: stop repeating at once
                        speaking_back = False
                    c.last, c.quiet_ms = loop.time(), 0
                    if not c.frames:
                        c.frames, c.before = c.before, []
                    c.frames.append(pcm)
                elif c.frames:
                    c.frames.append(pcm)
                    c.quiet_ms += 20
                    if c.quiet_ms >= END_OF_TURN_MS:
                        del c.frames[-END_OF_TURN_MS // 20:]  # not the silence after it
                        await repeat(c)
                else:
                    c.before = (c.before + [pcm])[-10:]
            elif ev == "mark":
                print(f"{m['name']} heard by everyone ({m['position_ms']} ms of the robot's audio)")
                speaking_back = False
            elif ev == "cleared":
                print(f"interrupted: {m['dropped_ms']} ms not played, marks {m['marks']}")
            elif ev == "stop":
                print(f"stop: {m['reason']}")
    finally:
        watcher.cancel()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--secret", required=True)
    a = ap.parse_args()

    def auth(connection, request):
        if request.headers.get("Authorization") != f"Bearer {a.secret}":
            return connection.respond(401, "wrong secret\n")
        return None

    async with serve(session, "0.0.0.0", a.port, process_request=auth, max_size=2**20):
        print(f"echo bot on ws://0.0.0.0:{a.port}/")
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
