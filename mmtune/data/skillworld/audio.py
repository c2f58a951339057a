"""SkillWorld audio clips: the vocabulary of a sound, event layout, and synthesis to WAV.

An audio *scene* is a JSON-able dict of the events a question is about::

    {"kind": "audio", "seconds": 2.0, "sample_rate": 16000,
     "events": [event, ...],   # in time order
     "seed": int,              # synthesis only: the noise window and the tones' start phases
     "query": {...}}           # the question's parameters (and mc options)

    event = {"type": "tone" | "sweep", "onset": s, "dur": s, "f0": Hz, "f1": Hz, "amp": peak,
             "level": "loud" | "quiet",
             "pitch": "high" | "low",        # tones only (f0 == f1)
             "length": "short" | "long",     # tones only
             "direction": "up" | "down"}     # sweeps only (f0 -> f1)

The categorical facts (pitch, length, level, direction) come from bands that never
overlap, like the grid's small/large sizes: the exact frequency, duration, amplitude and
onset are jittered inside their band and recorded in the scene. The background noise and
each tone's start phase come from the scene's ``seed`` (they are not facts anyone asks
about), so ``render_clip(scene)`` re-creates the exact WAV from the scene alone; the
generator uses that to synthesise clips one parquet shard at a time.
"""

from __future__ import annotations

import io
import math
import random
import wave
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000  # Whisper-style encoders expect 16 kHz mono
ORDINALS = ("first", "second", "third", "fourth", "fifth")
PITCHES = ("high", "low")
LENGTHS = ("short", "long")
LEVELS = ("loud", "quiet")
DIRECTIONS = ("up", "down")

# Bands (low, high). Pitch bands are ~1.3 octaves apart; lengths differ >= 2.5x; levels
# ~15 dB: each category is a clean fact, while the jitter stops it being one number.
PITCH_HZ = {"low": (300.0, 500.0), "high": (1200.0, 2000.0)}
LENGTH_S = {"short": (0.10, 0.16), "long": (0.40, 0.55)}
LEVEL_AMP = {"quiet": (0.08, 0.12), "loud": (0.50, 0.70)}
SWEEP_S = (0.50, 0.80)
BEEP_JITTER = 0.03  # beeps of one counting clip share a pitch, each +-3%
NOISE_STD = (0.002, 0.005)  # white noise under everything: no two clips are identical
RAMP_S = 0.01  # raised-cosine fade in/out: no clicks, and beeps stay separate
MARGIN_S = 0.05  # silence kept at both ends of the clip
MIN_GAP_S = 0.08  # silence between events: an energy detector with 10 ms frames separates them
MIN_CLIP_S = 1.5  # two long tones, the gap and the margins need ~1.3 s
# Background noise is a window of a fixed Gaussian noise bank at a random offset (and a
# random level): drawing 32k fresh normals per clip cost 0.4 ms, half of a clip's
# synthesis; a slice is free, and no two clips share an offset, jitter and events anyway.
NOISE_BANK_SEED = 16000
NOISE_BANK_SAMPLES = 1 << 19  # 32.8 s at 16 kHz: longer than the longest allowed clip (30 s)


def _band(rng: random.Random, lo_hi: tuple[float, float], log: bool = False) -> float:
    lo, hi = lo_hi
    if log:  # pitch is perceived on a log scale: uniform in octaves
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.uniform(lo, hi)


def tone(rng: random.Random, pitch: str, length: str, level: str, freq: float | None = None) -> dict:
    """A tone event (onset set by :func:`layout`); ``freq`` pins the frequency (beeps of one clip)."""
    f = round(freq if freq is not None else _band(rng, PITCH_HZ[pitch], log=True), 1)
    return {"type": "tone", "onset": 0.0, "dur": round(_band(rng, LENGTH_S[length]), 4), "f0": f, "f1": f,
            "amp": round(_band(rng, LEVEL_AMP[level]), 4), "level": level, "pitch": pitch, "length": length}


def sweep(rng: random.Random, direction: str, level: str) -> dict:
    """A glide between the two pitch bands: low -> high (up) or high -> low (down)."""
    lo, hi = (round(_band(rng, PITCH_HZ[p], log=True), 1) for p in ("low", "high"))
    f0, f1 = (lo, hi) if direction == "up" else (hi, lo)
    return {"type": "sweep", "onset": 0.0, "dur": round(_band(rng, SWEEP_S), 4), "f0": f0, "f1": f1,
            "amp": round(_band(rng, LEVEL_AMP[level]), 4), "level": level, "direction": direction}


def beeps(rng: random.Random, n: int) -> list[dict]:
    """``n`` short beeps of one clip: a shared pitch band, level and base frequency (+-3% each)."""
    pitch, level = rng.choice(PITCHES), rng.choice(LEVELS)
    lo, hi = PITCH_HZ[pitch]
    base = _band(rng, PITCH_HZ[pitch], log=True)
    return [tone(rng, pitch, "short", level,
                 freq=min(hi, max(lo, base * (1 + rng.uniform(-BEEP_JITTER, BEEP_JITTER))))) for _ in range(n)]


def layout(rng: random.Random, events: list[dict], seconds: float) -> list[dict]:
    """Set the events' onsets, in order, with random silences (>= MIN_GAP_S) between them."""
    need = 2 * MARGIN_S + sum(e["dur"] for e in events) + MIN_GAP_S * (len(events) - 1)
    free = seconds - need
    if free < 0:
        raise ValueError(f"a {seconds:g} s clip is too short for {len(events)} events lasting "
                         f"{need:.2f} s with gaps; raise data.skillworld.clip_seconds (>= {MIN_CLIP_S})")
    slack = sorted(rng.uniform(0, free) for _ in events)  # where each event sits in the free time
    t = MARGIN_S
    for i, e in enumerate(events):
        e["onset"] = round(t + slack[i] - (slack[i - 1] if i else 0.0), 4)
        t = e["onset"] + e["dur"] + MIN_GAP_S
    return events


def audio_scene(rng: random.Random, events: list[dict], seconds: float, **query) -> dict:
    return {"kind": "audio", "seconds": seconds, "sample_rate": SAMPLE_RATE,
            "events": layout(rng, events, seconds), "seed": rng.getrandbits(63), "query": query}


def encode_wav(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM WAV bytes (the stdlib writer: no dependency, ~10 us per clip)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    bank = np.random.default_rng(NOISE_BANK_SEED).standard_normal(NOISE_BANK_SAMPLES, dtype=np.float32)
    return np.concatenate([bank, bank])  # any window of up to NOISE_BANK_SAMPLES is one slice


def synthesize(scene: dict) -> np.ndarray:
    """The clip as float32 samples in [-1, 1]: the events over a little white noise.

    Each event is a sine (tones) or an exponential glide (sweeps: equal octaves per
    second, what "rising pitch" sounds like) with a raised-cosine fade in and out.
    """
    rng = np.random.default_rng(scene["seed"])
    sr = scene["sample_rate"]
    n = round(scene["seconds"] * sr)
    if n > NOISE_BANK_SAMPLES:
        raise ValueError(f"clip of {n} samples is longer than the noise bank ({NOISE_BANK_SAMPLES})")
    off = int(rng.integers(NOISE_BANK_SAMPLES))
    x = _noise_bank()[off:off + n] * np.float32(rng.uniform(*NOISE_STD))  # a new array: the bank stays intact
    fade = _fade(round(RAMP_S * sr))
    for e in scene["events"]:
        i0, m = round(e["onset"] * sr), round(e["dur"] * sr)
        f0, f1, dur = e["f0"], e["f1"], e["dur"]
        if f0 == f1:
            phase = np.arange(m, dtype=np.float64) * (2 * np.pi * f0 / sr)
        else:  # instantaneous frequency f0 * k**(t/dur), k = f1/f0, integrated
            k = f1 / f0
            phase = np.power(k, np.arange(m, dtype=np.float64) / (sr * dur))
            phase -= 1.0
            phase *= 2 * np.pi * f0 * dur / math.log(k)
        phase += rng.uniform(0, 2 * np.pi)
        wave_ = np.sin(phase, out=phase)
        wave_ *= e["amp"]
        f = fade if 2 * len(fade) <= m else _fade(m // 2)  # events >= 0.1 s: the 10 ms ramp fits
        wave_[:len(f)] *= f
        wave_[m - len(f):] *= f[::-1]
        x[i0:i0 + m] += wave_
    return np.clip(x, -1.0, 1.0, out=x)


@lru_cache(maxsize=4)
def _fade(r: int) -> np.ndarray:
    """A raised-cosine ramp 0 -> 1 of ``r`` samples."""
    return 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)


def render_clip(scene: dict) -> bytes:
    """WAV bytes (16 kHz, mono, 16-bit) for an audio scene; the same scene gives the same bytes."""
    return encode_wav(np.round(synthesize(scene) * 32767.0).astype(np.int16), scene["sample_rate"])
