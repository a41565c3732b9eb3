"""Synthetic sound events, instrument notes, backgrounds and room effects (numpy only).

Every generator takes a ``numpy.random.Generator`` and returns float32 mono audio at
16 kHz, so a clip is a pure function of its random stream. Parameters are drawn
from wide ranges: a class is defined by its *kind* of sound (a pitch sweep, a
decaying inharmonic spectrum, a train of impulses...), not by one fixed waveform.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SAMPLE_RATE = 16000

Generator = Callable[[np.random.Generator, float], np.ndarray]


def _time(duration: float) -> np.ndarray:
    return np.arange(int(round(duration * SAMPLE_RATE))) / SAMPLE_RATE


def _n(duration: float) -> int:
    return int(round(duration * SAMPLE_RATE))


def _normalise(x: np.ndarray, peak: float = 1.0) -> np.ndarray:
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m < 1e-9:
        return x.astype(np.float32)
    return (x * (peak / m)).astype(np.float32)


def _envelope(n: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n)
    a = min(n, max(1, _n(attack)))
    r = min(n - a, max(1, _n(release)))
    env[:a] = np.linspace(0.0, 1.0, a)
    if r > 0:
        env[n - r :] = np.linspace(1.0, 0.0, r)
    return env


def fast_length(n: int) -> int:
    """Smallest 2-3-5-smooth integer >= n: FFT sizes pocketfft handles quickly
    (an awkward prime length can be a hundred times slower)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _fft_filter(x: np.ndarray, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Zero-phase filtering by a frequency response given as a function of Hz."""
    n = x.size
    nfft = fast_length(n)
    # Single precision halves the FFT cost and is far below the 16-bit output's noise.
    spec = np.fft.rfft(x.astype(np.float32), nfft)
    freqs = np.fft.rfftfreq(nfft, 1.0 / SAMPLE_RATE).astype(np.float32)
    return np.fft.irfft(spec * gain(freqs), nfft)[:n]


def bandpass(x: np.ndarray, low: float, high: float, order: float = 2.0) -> np.ndarray:
    def gain(f: np.ndarray) -> np.ndarray:
        hp = 1.0 / np.sqrt(1.0 + (low / np.maximum(f, 1e-3)) ** (2 * order))
        lp = 1.0 / np.sqrt(1.0 + (f / high) ** (2 * order))
        return hp * lp

    return _fft_filter(x, gain)


def lowpass(x: np.ndarray, cutoff: float, order: float = 2.0) -> np.ndarray:
    return _fft_filter(x, lambda f: 1.0 / np.sqrt(1.0 + (f / cutoff) ** (2 * order)))


# --------------------------------------------------------------------------- noise


def coloured_noise(rng: np.random.Generator, duration: float, colour: str = "white") -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise, unit peak."""
    n = max(_n(duration), 2)
    if colour == "white":
        return _normalise(rng.standard_normal(n))
    exponent = {"pink": 0.5, "brown": 1.0}[colour]
    # Shaped directly in the frequency domain: one inverse FFT per clip.
    nfft = fast_length(n)
    freqs = np.fft.rfftfreq(nfft, 1.0 / SAMPLE_RATE)
    spec = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    spec = (spec / np.maximum(freqs, 20.0) ** exponent).astype(np.complex64)
    spec[0] = 0.0
    return _normalise(np.fft.irfft(spec, nfft)[:n])


# --------------------------------------------------------------------------- events


def siren(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _time(duration)
    lo = rng.uniform(450, 800)
    hi = lo * rng.uniform(1.5, 2.3)
    rate = rng.uniform(0.3, 3.0)  # sweeps per second: slow wail to fast yelp
    if rng.random() < 0.5:
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    else:
        sweep = (rate * t + rng.random()) % 1.0
    freq = lo + (hi - lo) * sweep
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    x = np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)
    return _normalise(x * _envelope(t.size, 0.05, 0.1))


def _bark(rng: np.random.Generator) -> np.ndarray:
    dur = rng.uniform(0.08, 0.22)
    t = _time(dur)
    f0 = rng.uniform(350, 800)
    # A bark's pitch jumps up then falls quickly; the noisy, formant-shaped
    # spectrum is what separates it from a tonal beep.
    f = f0 * (1.0 + 0.35 * np.exp(-t / 0.02)) * (1.0 - 0.3 * t / dur)
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    harm = sum(np.sin(k * phase) / k for k in range(1, 9))
    noise = bandpass(rng.standard_normal(t.size), 500, 3500)
    x = harm + rng.uniform(0.5, 1.2) * noise / (np.abs(noise).max() + 1e-9)
    env = (1 - np.exp(-t / 0.004)) * np.exp(-t / (dur * 0.35))
    x = bandpass(x * env, 250, 4000)
    return _normalise(x)


def dog_bark(rng: np.random.Generator, duration: float) -> np.ndarray:
    out = np.zeros(_n(duration))
    pos = _n(rng.uniform(0.0, 0.2))
    while pos < out.size - _n(0.1):
        b = _bark(rng) * rng.uniform(0.6, 1.0)
        end = min(out.size, pos + b.size)
        out[pos:end] += b[: end - pos]
        pos = end + _n(rng.uniform(0.12, 0.45))
    return _normalise(out)


def engine(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _time(duration)
    rpm_hz = rng.uniform(25, 70) * (1 + rng.uniform(-0.15, 0.15) * t / max(duration, 1e-3))
    phase = 2 * np.pi * np.cumsum(rpm_hz) / SAMPLE_RATE
    x = sum((0.8**k) * np.sin(k * phase + rng.uniform(0, 6.28)) for k in range(1, 14))
    rumble = lowpass(rng.standard_normal(t.size), rng.uniform(150, 400))
    x = x / np.abs(x).max() + 0.6 * rumble / (np.abs(rumble).max() + 1e-9)
    x *= 1 + 0.25 * np.sin(2 * np.pi * rng.uniform(4, 10) * t)
    return _normalise(x * _envelope(t.size, 0.2, 0.2))


def rain(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = _n(duration)
    hiss = bandpass(rng.standard_normal(n), rng.uniform(800, 2000), rng.uniform(5000, 7800))
    hiss /= np.abs(hiss).max() + 1e-9
    drops = np.zeros(n)
    count = int(rng.uniform(60, 200) * duration)
    where = rng.integers(0, n, count)
    drops[where] = rng.uniform(-1, 1, count)
    drops = bandpass(drops, 2000, 7500)
    drops /= np.abs(drops).max() + 1e-9
    x = hiss + rng.uniform(0.3, 0.8) * drops
    return _normalise(x * _envelope(n, 0.3, 0.3))


def alarm(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _time(duration)
    f = rng.uniform(1800, 3500)
    on = rng.uniform(0.06, 0.25)
    off = rng.uniform(0.05, 0.2)
    gate = ((t % (on + off)) < on).astype(float)
    gate = np.convolve(gate, np.ones(40) / 40, mode="same")  # soften clicks
    tone = np.sign(np.sin(2 * np.pi * f * t)) * 0.6 + np.sin(2 * np.pi * f * t)
    if rng.random() < 0.4:  # two-tone alarms
        f2 = f * rng.uniform(0.7, 0.85)
        which = (t // (on + off)) % 2
        tone = np.where(which == 0, tone, np.sin(2 * np.pi * f2 * t))
    return _normalise(lowpass(tone * gate, 7000))


def _strike(rng: np.random.Generator, duration: float, f0: float, ratios, decay: float):
    t = _time(duration)
    x = np.zeros(t.size)
    for k, r in enumerate(ratios):
        amp = rng.uniform(0.3, 1.0) / (1 + 0.3 * k)
        tau = decay / (1 + 0.4 * k) * rng.uniform(0.7, 1.3)
        x += amp * np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 6.28)) * np.exp(-t / tau)
    return x * (1 - np.exp(-t / 0.002))


def bell(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = _n(duration)
    out = np.zeros(n)
    f0 = rng.uniform(250, 900)
    ratios = (0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.66, 3.01, 4.16)  # minor-third bell partials
    strikes = int(rng.integers(1, 4))
    for s in range(strikes):
        start = _n(s * duration / strikes * rng.uniform(0.8, 1.0))
        piece = _strike(rng, (n - start) / SAMPLE_RATE, f0, ratios, rng.uniform(0.4, 1.2))
        out[start : start + piece.size] += piece
    return _normalise(out)


def bird_chirp(rng: np.random.Generator, duration: float) -> np.ndarray:
    out = np.zeros(_n(duration))
    pos = _n(rng.uniform(0.0, 0.15))
    f_lo = rng.uniform(2000, 3500)
    f_hi = f_lo * rng.uniform(1.3, 2.0)
    up = rng.random() < 0.5
    while pos < out.size - _n(0.05):
        d = rng.uniform(0.03, 0.12)
        t = _time(d)
        sweep = t / d if up else 1 - t / d
        f = f_lo + (f_hi - f_lo) * sweep ** rng.uniform(0.6, 1.6)
        chirp = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.sin(np.pi * t / d) ** 2
        end = min(out.size, pos + chirp.size)
        out[pos:end] += chirp[: end - pos] * rng.uniform(0.5, 1.0)
        gap = rng.uniform(0.02, 0.08) if rng.random() < 0.7 else rng.uniform(0.15, 0.4)
        pos = end + _n(gap)
    return _normalise(out)


def clapping(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = _n(duration)
    out = np.zeros(n)
    rate = rng.uniform(2.5, 8.0)
    tt = rng.uniform(0, 0.1)
    while tt < duration - 0.05:
        d = rng.uniform(0.01, 0.03)
        m = _n(0.08)
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (d * SAMPLE_RATE))
        burst = bandpass(burst, rng.uniform(600, 1200), rng.uniform(4000, 7000))
        s = _n(tt)
        end = min(n, s + m)
        out[s:end] += burst[: end - s] * rng.uniform(0.6, 1.0)
        tt += (1.0 / rate) * rng.uniform(0.8, 1.2)
    return _normalise(out)


def water_drops(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = _n(duration)
    out = np.zeros(n)
    count = max(2, int(rng.uniform(3, 10) * duration))
    for s in np.sort(rng.uniform(0, max(duration - 0.1, 0.01), count)):
        d = rng.uniform(0.03, 0.08)
        t = _time(d)
        f0 = rng.uniform(500, 1500)
        # A drop is a bubble resonance whose pitch rises as it shrinks.
        f = f0 * (1 + rng.uniform(0.5, 1.5) * t / d)
        plop = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-t / (d / 3))
        i = _n(s)
        end = min(n, i + plop.size)
        out[i:end] += plop[: end - i] * rng.uniform(0.4, 1.0)
    return _normalise(out)


def knocking(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = _n(duration)
    out = np.zeros(n)
    f = rng.uniform(90, 260)
    group = int(rng.integers(2, 5))
    interval = rng.uniform(0.12, 0.25)
    tt = rng.uniform(0, 0.15)
    while tt < duration - 0.1:
        for _ in range(group):
            if tt >= duration - 0.1:
                break
            d = 0.12
            t = _time(d)
            thump = np.sin(2 * np.pi * f * t) * np.exp(-t / rng.uniform(0.015, 0.04))
            click = rng.standard_normal(t.size) * np.exp(-t / 0.003) * 0.5
            i = _n(tt)
            end = min(n, i + t.size)
            out[i:end] += (thump + click)[: end - i]
            tt += interval * rng.uniform(0.9, 1.1)
        tt += rng.uniform(0.4, 0.8)
    return _normalise(lowpass(out, 3000))


SOUND_EVENTS: dict[str, Generator] = {
    "siren": siren,
    "dog bark": dog_bark,
    "engine": engine,
    "rain": rain,
    "alarm": alarm,
    "bell": bell,
    "bird chirp": bird_chirp,
    "clapping": clapping,
    "water drops": water_drops,
    "knocking": knocking,
}


# --------------------------------------------------------------------------- backgrounds


def wind(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _time(duration)
    x = lowpass(rng.standard_normal(t.size), rng.uniform(300, 900), order=1.5)
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6.28))
    return _normalise(x * gust)


def traffic(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _time(duration)
    x = coloured_noise(rng, duration, "brown").astype(np.float64)
    hum = np.sin(2 * np.pi * rng.uniform(40, 90) * t) * 0.3
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.28))
    return _normalise((x + hum) * swell)


BACKGROUNDS: dict[str, Generator] = {"rain": rain, "wind": wind, "traffic": traffic}


# --------------------------------------------------------------------------- instruments


def _additive(f0: float, t: np.ndarray, amps, phases=None, inharm: float = 0.0) -> np.ndarray:
    x = np.zeros(t.size)
    nyq = SAMPLE_RATE / 2 * 0.95
    for k, a in enumerate(amps, start=1):
        fk = f0 * k * np.sqrt(1 + inharm * k * k)
        if fk >= nyq:
            break
        ph = 0.0 if phases is None else phases[k - 1]
        x += a * np.sin(2 * np.pi * fk * t + ph)
    return x


def flute(rng, f0, duration):
    t = _time(duration)
    vib = 1 + rng.uniform(0.002, 0.008) * np.sin(2 * np.pi * rng.uniform(4.5, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vib) / SAMPLE_RATE
    x = np.sin(phase) + 0.25 * np.sin(2 * phase) + 0.08 * np.sin(3 * phase)
    breath = bandpass(rng.standard_normal(t.size), f0, min(f0 * 6, 7500))
    x = x + rng.uniform(0.05, 0.15) * breath / (np.abs(breath).max() + 1e-9)
    return x * _envelope(t.size, rng.uniform(0.06, 0.15), rng.uniform(0.08, 0.2))


def reed(rng, f0, duration):
    t = _time(duration)
    # Clarinet-like: a cylindrical bore favours odd harmonics.
    amps = [(1.0 / k if k % 2 else 0.08 / k) for k in range(1, 30)]
    x = _additive(f0, t, amps)
    return x * _envelope(t.size, rng.uniform(0.03, 0.07), rng.uniform(0.05, 0.15))


def brass(rng, f0, duration):
    t = _time(duration)
    x = _additive(f0, t, [1.0 / k for k in range(1, 40)])
    # Brightness grows with the attack: the cut-off sweeps up over the first 100 ms.
    bright = _additive(f0, t, [1.0 / k for k in range(1, 5)])
    attack = np.clip(t / rng.uniform(0.06, 0.12), 0, 1)
    x = bright * (1 - attack) + x * attack
    return x * _envelope(t.size, rng.uniform(0.03, 0.08), rng.uniform(0.08, 0.2))


def guitar(rng, f0, duration):
    n = _n(duration)
    period = max(2, int(round(SAMPLE_RATE / f0)))
    decay = rng.uniform(0.990, 0.998)
    # Karplus-Strong, one period per step: each period is the low-passed previous one.
    buf = rng.uniform(-1, 1, period)
    buf = lowpass(buf, rng.uniform(2000, 6000)) if period > 8 else buf
    out = np.empty(n + period)
    out[:period] = buf
    prev_last = 0.0
    for s in range(period, n + period, period):
        block = out[s - period : s]
        shifted = np.concatenate(([prev_last], block[:-1]))
        prev_last = block[-1]
        e = min(s + period, out.size)
        out[s:e] = (0.5 * decay * (block + shifted))[: e - s]
    return out[:n]


def mallet(rng, f0, duration):
    t = _time(duration)
    ratio = rng.choice([1.4, 2.76, 3.5, 5.4])
    index = rng.uniform(2, 5) * np.exp(-t / rng.uniform(0.05, 0.15))
    x = np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * f0 * ratio * t))
    return x * np.exp(-t / rng.uniform(0.25, 0.6)) * (1 - np.exp(-t / 0.002))


def organ(rng, f0, duration):
    t = _time(duration)
    drawbars = {1: 1.0, 2: rng.uniform(0.5, 1), 3: rng.uniform(0.3, 0.8), 4: rng.uniform(0.3, 0.7)}
    drawbars.update({6: rng.uniform(0.1, 0.5), 8: rng.uniform(0.1, 0.5)})
    amps = [drawbars.get(k, 0.0) for k in range(1, 9)]
    x = _additive(f0, t, amps)
    x *= 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(5, 7) * t)  # rotary-speaker tremolo
    return x * _envelope(t.size, 0.01, 0.03)


def keyboard(rng, f0, duration):
    t = _time(duration)
    x = np.zeros(t.size)
    inharm = rng.uniform(1e-4, 6e-4)
    base = rng.uniform(0.6, 1.5)
    for k in range(1, 20):
        fk = f0 * k * np.sqrt(1 + inharm * k * k)
        if fk >= SAMPLE_RATE / 2 * 0.95:
            break
        # Higher partials die away faster, so the tone darkens as it decays.
        x += (1.0 / k**1.2) * np.sin(2 * np.pi * fk * t) * np.exp(-t * k / base)
    hammer = rng.standard_normal(t.size) * np.exp(-t / 0.004) * 0.2
    return (x + hammer) * (1 - np.exp(-t / 0.002)) * _envelope(t.size, 0.001, 0.05)


INSTRUMENTS: dict[str, Callable[[np.random.Generator, float, float], np.ndarray]] = {
    "flute": flute,
    "reed": reed,
    "brass": brass,
    "guitar": guitar,
    "mallet": mallet,
    "organ": organ,
    "keyboard": keyboard,
}


def instrument_note(
    rng: np.random.Generator, family: str, midi_pitch: int, duration: float
) -> np.ndarray:
    f0 = 440.0 * 2 ** ((midi_pitch - 69) / 12)
    return _normalise(INSTRUMENTS[family](rng, f0, duration))


# --------------------------------------------------------------------------- effects


def reverb(
    rng: np.random.Generator,
    x: np.ndarray,
    rt60: float | None = None,
    wet: float | None = None,
) -> np.ndarray:
    """Convolve with a synthetic room: exponentially decaying, darkened noise."""
    rt60 = rng.uniform(0.15, 0.8) if rt60 is None else rt60
    wet = rng.uniform(0.1, 0.45) if wet is None else wet
    n_ir = _n(rt60)
    t = np.arange(n_ir) / SAMPLE_RATE
    ir = (rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60)).astype(np.float32)
    ir[: _n(0.002)] = 0.0  # pre-delay before the first reflections
    nfft = fast_length(x.size + n_ir - 1)
    freqs = np.fft.rfftfreq(nfft, 1.0 / SAMPLE_RATE).astype(np.float32)
    # Walls absorb high frequencies: the room's low-pass is applied in the same product.
    damping = 1.0 / np.sqrt(1.0 + (freqs / np.float32(rng.uniform(2500, 7000))) ** 4)
    spec = np.fft.rfft(x.astype(np.float32), nfft) * np.fft.rfft(ir, nfft) * damping
    tail = np.fft.irfft(spec, nfft)[: x.size]
    tail *= rms(x) / (rms(tail) + 1e-9)
    return ((1 - wet) * x + wet * tail).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled so that 20 log10(rms(signal) / rms(noise)) = snr_db."""
    noise = fit_length(noise, signal.size)
    s, n = rms(signal), rms(noise)
    if s < 1e-9 or n < 1e-9:
        return (signal + noise * 0.0).astype(np.float32)
    return (signal + noise * (s / n) * 10 ** (-snr_db / 20)).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    if x.size >= n:
        return x[:n]
    return np.pad(x, (0, n - x.size))


def place(canvas: np.ndarray, x: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Add ``x`` into ``canvas`` at ``start``, cropping whatever overhangs."""
    start = max(0, start)
    end = min(canvas.size, start + x.size)
    if end > start:
        canvas[start:end] += gain * x[: end - start]
