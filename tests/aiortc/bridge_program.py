"""The operator's program of the media bridge end-to-end test (tests/tests/robot_bridge.rs),
written against the protocol of docs/bridge.md with Python `websockets`, nothing of ours.

    bridge_program.py --port P --secret S --fixture speech.wav [--then hangup|wait] [--tls DIR]

Serves ws://127.0.0.1:P/ (Authorization: Bearer S, else 401); with --tls DIR,
wss://127.0.0.1:P/ with a certificate for 127.0.0.1 and localhost signed by a CA made for
this run (Python `cryptography`), whose certificate it writes to DIR/ca.pem before it
listens. On each connection:

- `start` (resume false): waits for a participant's speech; once no `media` came for
  400 ms it compares what it heard with the fixture (cross-correlation after alignment),
  speaks it back (the same 20 ms payloads: pcm16 frames or Opus packets), then `mark echo`.
- `mark echo` played: speaks 250 frames (5 s: what it heard, again), `mark cut`, and
  300 ms later `clear`.
- `cleared`: with --then hangup, `hangup`; with --then wait, nothing (the test kills it).
- `start` with resume true (the program restarted): speaks 50 frames of a tone, then
  `mark back`; once that is played, `hangup`.

Prints one JSON line per event on stdout ({"got": ..., "t": monotonic seconds}): the test
reads them as they come. CLOCK_MONOTONIC is one clock for every process of the machine, so
the test may compare these times with its own.
"""

import argparse
import asyncio
import base64
import fractions
import json
import os
import sys
import time

import numpy as np
import websockets
from websockets.asyncio.server import serve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from robot_listener import compare, upsample_fft  # noqa: E402


def say(**fields):
    fields["t"] = time.monotonic()
    print(json.dumps(fields), flush=True)


def tone_frames(fmt, n, hz=880.0):
    """n 20 ms frames of a tone in the session's format."""
    rate = fmt["rate"]
    per = rate // 50
    t = np.arange(per * n) / rate
    pcm = (0.25 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    if fmt["encoding"] == "pcm16":
        return [pcm[k * per:(k + 1) * per].tobytes() for k in range(n)]
    import av  # PyAV (aiortc's dependency) encodes Opus

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = 32000
    enc.options = {"frame_duration": "20", "application": "voip"}
    enc.open()
    out = []
    for k in range(n):
        f = av.AudioFrame.from_ndarray(pcm[k * per:(k + 1) * per].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate = 48000
        f.pts = k * per
        f.time_base = fractions.Fraction(1, 48000)
        out.extend(bytes(p) for p in enc.encode(f))
    return out


def decode_heard(fmt, payloads):
    """What the program heard, as mono float at 48 kHz."""
    if fmt["encoding"] == "pcm16":
        x = np.frombuffer(b"".join(payloads), dtype="<i2").astype(np.float64) / 32768.0
        return upsample_fft(x, 48000 // fmt["rate"]) if fmt["rate"] != 48000 else x
    import av

    dec = av.CodecContext.create("opus", "r")
    dec.sample_rate = 48000
    dec.layout = "mono"
    chunks = []
    for p in payloads:
        for fr in dec.decode(av.Packet(p)):
            chunks.append(fr.to_ndarray().reshape(-1).astype(np.float64))
    return np.concatenate(chunks) if chunks else np.zeros(0)


class Session:
    def __init__(self, ws, args):
        self.ws = ws
        self.args = args
        self.fmt = None
        self.heard = {}
        self.seqs = {}
        self.last_media = None
        self.echoed = False

    async def send(self, **msg):
        await self.ws.send(json.dumps(msg))

    async def speak(self, payloads):
        for p in payloads:
            await self.send(event="media", payload=base64.b64encode(p).decode())

    async def watch(self):
        """Echoes once the participant has been quiet for 400 ms."""
        while not self.echoed:
            await asyncio.sleep(0.02)
            if self.last_media is None or time.monotonic() - self.last_media < 0.4:
                continue
            self.echoed = True
            uid, payloads = max(self.heard.items(), key=lambda kv: len(kv[1]))
            result = compare(decode_heard(self.fmt, payloads), self.args.fixture)
            say(got="heard", uid=uid, frames=len(payloads), seq_gaps=self.gaps(uid), **result)
            await self.speak(payloads)
            await self.send(event="mark", name="echo")
            say(got="echo_sent", frames=len(payloads))

    def gaps(self, uid):
        s = self.seqs.get(uid, [])
        return sum(1 for a, b in zip(s, s[1:]) if b != a + 1)

    async def run(self):
        watcher = None
        try:
            async for text in self.ws:
                m = json.loads(text)
                ev = m.get("event")
                if ev == "start":
                    self.fmt = m["format"]
                    say(got="start", resume=m["resume"], format=m["format"], session=m["session"], call=m["call"])
                    if m["resume"]:
                        frames = tone_frames(self.fmt, 50)
                        await self.speak(frames)
                        await self.send(event="mark", name="back")
                        say(got="beep_sent", frames=len(frames))
                    else:
                        watcher = asyncio.ensure_future(self.watch())
                elif ev == "participant":
                    say(got="participant", uid=m["uid"], state=m["state"])
                elif ev == "media":
                    uid = m["uid"]
                    self.heard.setdefault(uid, []).append(base64.b64decode(m["payload"]))
                    self.seqs.setdefault(uid, []).append(m["seq"])
                    self.last_media = time.monotonic()
                elif ev == "mark":
                    say(got="mark", name=m["name"], position_ms=m["position_ms"])
                    if m["name"] == "echo":
                        uid, payloads = max(self.heard.items(), key=lambda kv: len(kv[1]))
                        long = [payloads[k % len(payloads)] for k in range(250)]
                        await self.speak(long)
                        await self.send(event="mark", name="cut")
                        say(got="long_sent", frames=len(long))
                        await asyncio.sleep(0.3)
                        await self.send(event="clear")
                        say(got="clear_sent")
                    elif m["name"] == "back":
                        await self.send(event="hangup")
                        say(got="hangup_sent")
                elif ev == "cleared":
                    say(got="cleared", marks=m["marks"], dropped_ms=m["dropped_ms"])
                    if self.args.then == "hangup":
                        await self.send(event="hangup")
                        say(got="hangup_sent")
                elif ev == "stop":
                    say(got="stop", reason=m["reason"])
        except websockets.ConnectionClosed:
            pass
        finally:
            if watcher is not None:
                watcher.cancel()
            say(got="closed")


def make_tls(folder):
    """A CA made for this run and a server certificate for 127.0.0.1 and localhost signed by
    it; writes the CA's certificate to folder/ca.pem; returns an ssl context serving the
    server certificate."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(folder, exist_ok=True)
    pem = serialization.Encoding.PEM
    with open(os.path.join(folder, "server.pem"), "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(os.path.join(folder, "server.key"), "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(os.path.join(folder, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(folder, "server.pem"), os.path.join(folder, "server.key"))
    return ctx


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--then", choices=["hangup", "wait"], default="hangup")
    ap.add_argument("--tls", help="serve wss:// with a CA made for this run; its certificate goes to DIR/ca.pem")
    args = ap.parse_args()
    ssl_ctx = make_tls(args.tls) if args.tls else None

    def check(connection, request):
        if request.headers.get("Authorization") != f"Bearer {args.secret}":
            return connection.respond(401, "wrong secret\n")
        return None

    async def handler(ws):
        await Session(ws, args).run()

    async with serve(handler, "127.0.0.1", args.port, process_request=check, max_size=2**22, ssl=ssl_ctx):
        say(got="listening", port=args.port, tls=bool(ssl_ctx))
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
