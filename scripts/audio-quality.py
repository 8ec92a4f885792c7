#!/usr/bin/env python3
"""Wideband PESQ (ITU-T P.862.2, PyPI `pesq`) of Opus files against their source.

usage: audio-quality.py REF.wav DEG.wav [DEG.wav ...]

REF is the original speech (any rate); each DEG is a decoded Opus output (any rate, e.g. the
48 kHz WAV from `opusdec --rate 48000 --float`). Both are brought to 16 kHz mono with
scipy.signal.resample_poly, aligned by the integer lag that maximises their cross-correlation
(within +-2000 samples at 16 kHz), cut to the common length, and scored with
pesq(16000, ref, deg, 'wb'). Prints one JSON object per DEG: {"file", "pesq_wb", "lag", "snr_db"}.
"""
import json
import sys
from math import gcd

import numpy as np
import soundfile as sf
from pesq import pesq
from scipy.signal import correlate, resample_poly


def load16k(path):
    x, rate = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if rate != 16000:
        g = gcd(16000, rate)
        x = resample_poly(x, 16000 // g, rate // g)
    return x


def align(ref, deg, max_lag=2000):
    n = min(len(ref), len(deg))
    c = correlate(deg[:n], ref[:n], mode="full", method="fft")
    mid = n - 1
    window = c[mid - max_lag : mid + max_lag + 1]
    lag = int(np.argmax(window)) - max_lag
    if lag >= 0:
        d, r = deg[lag:], ref
    else:
        d, r = deg, ref[-lag:]
    m = min(len(d), len(r))
    return r[:m], d[:m], lag


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    ref = load16k(sys.argv[1])
    for path in sys.argv[2:]:
        deg = load16k(path)
        r, d, lag = align(ref, deg)
        score = pesq(16000, r, d, "wb")
        noise = np.sum((d - r) ** 2)
        snr = float(10 * np.log10(np.sum(r**2) / noise)) if noise > 0 else float("inf")
        print(json.dumps({"file": path, "pesq_wb": round(float(score), 3), "lag": lag, "snr_db": round(snr, 2)}))


if __name__ == "__main__":
    main()
