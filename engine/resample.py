"""Resampling mono int16 PCM, e.g. a voice's 22.05 kHz to WebRTC's 48 kHz."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from engine.arrays import Int16Array

__all__ = ["WEBRTC_RATE", "resample", "resample_to_48k"]

Float64Array = npt.NDArray[np.float64]

WEBRTC_RATE = 48_000

_ZERO_CROSSINGS = 16  # per side of the sinc; ~-70 dB stopband with Blackman
_ROLLOFF = 0.95  # cut-off as a fraction of the lower Nyquist frequency


def resample_to_48k(pcm: Int16Array, rate: int) -> Int16Array:
    """Mono int16 PCM at `rate` as mono int16 PCM at 48 kHz (WebRTC's rate)."""
    return resample(pcm, rate, WEBRTC_RATE)


def resample(pcm: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    """Resample mono int16 PCM by windowed-sinc polyphase filtering.

    Exact for rational ratios (22 050 -> 48 000 is 320/147). Output length
    is ceil(len * dst / src), so duration is kept to within one sample.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    if pcm.ndim != 1:
        raise ValueError(f"expected mono 1-D PCM, got shape {pcm.shape}")
    if src_rate == dst_rate or len(pcm) == 0:
        return pcm.astype(np.int16, copy=True)
    out = _resample_float(pcm.astype(np.float64), src_rate, dst_rate)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _resample_float(x: Float64Array, src_rate: int, dst_rate: int) -> Float64Array:
    gcd = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // gcd, src_rate // gcd
    cutoff = min(1.0, up / down) * _ROLLOFF  # in units of the input Nyquist
    half = math.ceil(_ZERO_CROSSINGS / cutoff)  # taps each side, in input samples
    n_out = -(-len(x) * up // down)
    padded = np.concatenate([np.zeros(half - 1), x, np.zeros(half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half)
    out = np.empty(n_out)
    # Output n sits at input time n*down/up = base + phase/up. Outputs n0,
    # n0+up, n0+2up... share a phase and step `down` inputs at a time.
    for n0 in range(min(up, n_out)):
        base, phase = divmod(n0 * down, up)
        taps = _taps(phase / up, half, cutoff)
        out[n0::up] = windows[base::down][: len(out[n0::up])] @ taps
    return out


def _taps(fraction: float, half: int, cutoff: float) -> Float64Array:
    """Filter weights for x[base-half+1 .. base+half] at time base + fraction."""
    t = fraction - np.arange(-half + 1, half + 1, dtype=np.float64)
    window = 0.42 + 0.5 * np.cos(np.pi * t / half) + 0.08 * np.cos(2 * np.pi * t / half)
    taps = np.asarray(cutoff * np.sinc(cutoff * t) * np.where(np.abs(t) < half, window, 0.0))
    # Unit gain at DC for every phase, or the phases ripple against each other.
    return taps / np.sum(taps)
