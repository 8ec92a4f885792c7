"""A "press to talk" announcer for the robot's media bridge (docs/bridge.md): an operator
speaks into a call through the robot while holding the button, and hears when it was heard.

    pip install websockets numpy          (and sounddevice for a microphone)
    python bridge_announcer.py --port 9001 --secret s3cret [--wav announcement.wav]

DAPI_BRIDGES='{"pa": {"url": "ws://HOST:9001/", "secret": "s3cret", "format": "pcm16",
"rate": 16000}}', then `call/robot` (or `invite/robot`) with `"bridge": "pa"`.

Commands on the terminal, one per line:

    t        press: talk (the microphone, or --wav played as if spoken live) until ...
    t        ... release: the words said so far are finished, a mark tells when they were heard
    x        cut: stop at once, whatever was still queued is dropped (`clear`)
    p NAME   play a prepared asset (PUT /admin/audio/NAME)
    q        hang up: the robot leaves the call

Audio goes out in 20 ms frames as it is captured; the robot plays it on its own clock, so
nothing here sleeps to pace it.
"""

import argparse
import asyncio
import base64
import json
import sys
import wave

import numpy as np
from websockets.asyncio.server import serve


def wav_frames(path, rate):
    """A 16-bit WAV as 20 ms frames at `rate` (mono, linear interpolation if needed)."""
    with wave.open(path, "rb") as w:
        src, ch = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, ch).mean(axis=1)
    if src != rate:
        t = np.arange(int(len(x) * rate / src)) * src / rate
        x = np.interp(t, np.arange(len(x)), x)
    pcm = x.astype("<i2").tobytes()
    n = rate // 50 * 2
    return [pcm[i:i + n] for i in range(0, len(pcm) - n + 1, n)]


async def capture(rate, wav, out):
    """Puts 20 ms frames on `out` in real time until cancelled."""
    if wav:
        frames = wav_frames(wav, rate)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, f in enumerate(frames):
            await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))  # as a microphone would
            await out.put(f)
        return
    import sounddevice  # noqa: PLC0415  (only for a live microphone)

    loop = asyncio.get_running_loop()
    with sounddevice.RawInputStream(samplerate=rate, channels=1, dtype="int16", blocksize=rate // 50,
                                    callback=lambda d, *_: loop.call_soon_threadsafe(out.put_nowait, bytes(d))):
        await asyncio.Future()


async def session(ws, wav):
    rate = None
    frames = asyncio.Queue()
    talking = None
    said = 0

    async def send(**m):
        await ws.send(json.dumps(m))

    async def pump():
        while True:
            f = await frames.get()
            await send(event="media", payload=base64.b64encode(f).decode())

    async def keys():
        nonlocal talking, said
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if line == "t" and talking is None:
                talking = asyncio.ensure_future(capture(rate, wav, frames))
                print("talking... (t to release)")
            elif line == "t":
                talking.cancel()
                talking = None
                said += 1
                await send(event="mark", name=f"announcement-{said}")
            elif line == "x":
                if talking is not None:
                    talking.cancel()
                    talking = None
                while not frames.empty():
                    frames.get_nowait()
                await send(event="clear")
            elif line.startswith("p "):
                await send(event="play", audio=line[2:].strip())
            elif line == "q":
                await send(event="hangup")

    tasks = []
    try:
        async for text in ws:
            m = json.loads(text)
            ev = m["event"]
            if ev == "start":
                rate = m["format"]["rate"]
                if m["format"]["encoding"] != "pcm16":
                    print("the announcer needs a pcm16 bridge")
                    await send(event="hangup")
                    return
                print(f"on the air in {m['channel']} (resume {m['resume']}); t to talk")
                tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(keys())]
            elif ev == "participant":
                print(f"{m['uid']} {m['state']}")
            elif ev == "mark":
                print(f"{m['name']} was heard by everyone")
            elif ev == "cleared":
                print(f"cut: {m['dropped_ms']} ms dropped; never heard: {m['marks']}")
            elif ev == "stop":
                print(f"the robot left: {m['reason']}")
    finally:
        for t in tasks + ([talking] if talking else []):
            t.cancel()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--wav", help="speak this file instead of the microphone")
    a = ap.parse_args()

    def auth(connection, request):
        if request.headers.get("Authorization") != f"Bearer {a.secret}":
            return connection.respond(401, "wrong secret\n")
        return None

    async with serve(lambda ws: session(ws, a.wav), "0.0.0.0", a.port, process_request=auth):
        print(f"announcer on ws://0.0.0.0:{a.port}/")
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
