"""In-process speech synthesis with eSpeak NG.

The eSpeak NG shared library and its voice data come from the PyPI package
``espeakng-loader``; the library is driven directly through :mod:`ctypes`, so there is
no subprocess and no system package. eSpeak NG renders at 22.05 kHz; the audio is
resampled to 16 kHz.

Synthesis is deterministic: the same text, voice and parameters always give the same
samples, whatever was spoken before (see :class:`_Engine` for how). An utterance costs
about 0.6 ms per word plus 1.5 ms of set-up (about 4 ms more for the en-us family of
voices, whose first use per library load is slow).

eSpeak NG keeps global state and is not thread-safe, so one engine per process is
created lazily and every call goes through a lock.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

# Values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

_INSTALL_HINT = (
    "Speech synthesis needs the eSpeak NG library from the PyPI package 'espeakng-loader'. "
    "Install it with `pip install espeakng-loader` (or `pip install -e '.[offline]'`)."
)


class SpeechError(RuntimeError):
    """eSpeak NG is unavailable or rejected a request."""


@dataclass(frozen=True)
class Voice:
    """How an utterance is spoken.

    ``language`` is an eSpeak NG voice name (``en-us``, ``de``, ``fr``...), ``variant``
    one of the variant files in ``espeak-ng-data/voices/!v`` (``m3``, ``f2``...).
    ``rate`` is in words per minute (80-450); ``pitch`` and ``pitch_range`` are on
    eSpeak's 0-100 scale (50 is the voice's own setting).
    """

    language: str = "en-us"
    variant: str | None = None
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    @property
    def espeak_name(self) -> str:
        return self.language if not self.variant else f"{self.language}+{self.variant}"


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None


class _Engine:
    """Loads the library afresh for every utterance.

    eSpeak NG's wave generator keeps static state between utterances (the pitch
    flutter phase, a roughness cycle counter, automatic gain), and espeak_Terminate /
    espeak_Initialize do not reset it, so the same request gives slightly different
    samples depending on what was spoken before. Unloading and reloading the shared
    object is the only reset it offers; it costs about 1 ms (plus the voice's
    dictionary load, 0.2-5 ms) per utterance.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise SpeechError(_INSTALL_HINT) from err
        self._lib_path = espeakng_loader.get_library_path()
        self._data_path = espeakng_loader.get_data_path().encode()
        try:
            self._libc: ctypes.CDLL | None = ctypes.CDLL(None)
        except (OSError, TypeError):  # no POSIX libc handle (Windows)
            self._libc = None
        self._chunks: list[bytes] = []
        self._voice_files: dict[str, str] | None = None
        # The ctypes callback object must outlive every library instance using it.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib = self._load()
        self.native_rate = self._initialize(lib)
        self._unload(lib)

    def _load(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(self._lib_path, mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise SpeechError(
                f"Could not load the eSpeak NG library: {err}. {_INSTALL_HINT}"
            ) from err
        _declare(lib)
        return lib

    def _initialize(self, lib: ctypes.CDLL) -> int:
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 200, self._data_path, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise SpeechError(f"espeak_Initialize failed (data path {self._data_path!r}).")
        lib.espeak_SetSynthCallback(self._callback)
        return rate

    @staticmethod
    def _unload(lib: ctypes.CDLL) -> None:
        import _ctypes

        lib.espeak_Terminate()
        close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
        if close is not None:
            close(lib._handle)

    def _voice_spec(self, voice: Voice) -> str:
        # Naming the voice file by its path under lang/ skips the library's scan of
        # every voice file, which otherwise dominates the cost of a short utterance.
        if self._voice_files is None:
            lang_dir = Path(self._data_path.decode()) / "lang"
            self._voice_files = {
                f.name.lower(): f.relative_to(lang_dir).as_posix()
                for f in lang_dir.rglob("*")
                if f.is_file()
            }
        spec = self._voice_files.get(voice.language.lower(), voice.language)
        return spec if not voice.variant else f"{spec}+{voice.variant}"

    def _collect(self, wav, num_samples, _events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        return 0

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        lib = self._load()
        try:
            self._initialize(lib)
            name = voice.espeak_name
            if lib.espeak_SetVoiceByName(self._voice_spec(voice).encode()) != _EE_OK:
                raise SpeechError(
                    f"eSpeak NG has no voice {name!r} (language {voice.language!r}, "
                    f"variant {voice.variant!r})."
                )
            lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate), 0)
            lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
            lib.espeak_SetParameter(_PARAM_RANGE, int(voice.pitch_range), 0)
            lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            lib.espeak_SetParameter(_PARAM_WORDGAP, int(voice.word_gap), 0)
            # Breath noise draws from the library's own generator and Klatt voices
            # from libc rand() (the process-wide one); both are seeded so noisy
            # voices repeat exactly too.
            if hasattr(lib, "espeak_ng_SetRandSeed"):
                lib.espeak_ng_SetRandSeed(0)
            if self._libc is not None:
                self._libc.srand(0)
            data = text.encode("utf-8") + b"\0"
            self._chunks = []
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise SpeechError(f"espeak_Synth failed with code {err} for {text!r}.")
            lib.espeak_Synchronize()
            pcm = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        finally:
            self._chunks = []
            self._unload(lib)
        return pcm


_engine: _Engine | None = None
_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def is_available() -> bool:
    """True when the eSpeak NG library can be loaded."""
    try:
        with _lock:
            _get_engine()
    except SpeechError:
        return False
    return True


def _smooth_at_least(n: int) -> int:
    # FFT lengths with only small prime factors keep pocketfft fast.
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float array in the frequency domain.

    Plain numpy FFTs on purpose: they run on one thread, so clip generation in
    parallel worker processes does not fight over BLAS / OpenMP threads (a polyphase
    matrix product, or torchaudio, slowed down by an order of magnitude under load).
    A raised-cosine roll-off below the lower Nyquist frequency keeps ringing short,
    and zero padding keeps the circular wrap-around off the signal.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == new_sr or audio.size == 0:
        return audio
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    margin = max(64, orig_sr // 50)
    blocks = _smooth_at_least(-(-(audio.size + margin) // down))
    n_in, n_out = blocks * down, blocks * up
    spec = np.fft.rfft(audio, n_in)
    freqs = np.fft.rfftfreq(n_in, 1.0 / orig_sr).astype(np.float32)
    nyquist = min(orig_sr, new_sr) / 2
    edge = 0.9 * nyquist
    ramp = np.clip((freqs - edge) / (nyquist - edge), 0.0, 1.0)
    spec *= 0.5 + 0.5 * np.cos(np.pi * ramp)
    out_spec = np.zeros(n_out // 2 + 1, dtype=spec.dtype)
    keep = min(spec.size, out_spec.size)
    out_spec[:keep] = spec[:keep]
    out = np.fft.irfft(out_spec, n_out) * (n_out / n_in)
    return out[: -(-audio.size * up // down)].astype(np.float32)


def synthesize(
    text: str,
    voice: Voice | None = None,
    *,
    sample_rate: int = SAMPLE_RATE,
    trim: bool = True,
) -> np.ndarray:
    """Speak ``text`` and return float32 mono audio in [-1, 1] at ``sample_rate``.

    ``trim`` removes the leading and trailing silence eSpeak adds around utterances,
    so callers control the placement of speech in a clip.
    """
    voice = voice or Voice()
    with _lock:
        engine = _get_engine()
        pcm = engine.synthesize(text, voice)
        native = engine.native_rate
    audio = pcm.astype(np.float32) / 32768.0
    if trim:
        audio = trim_silence(audio)
    return resample(audio, native, sample_rate)


def trim_silence(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0] : loud[-1] + 1]
