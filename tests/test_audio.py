"""PCM decoding with odd frame sizes, float validation, streaming resampling."""

import numpy as np
import pytest

from streaming.audio import PcmDecoder, Resampler, float_to_pcm16
from streaming.protocol import ProtocolError


def test_s16_split_at_every_byte_loses_nothing():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 1001).astype(np.float32)
    data = float_to_pcm16(x)
    dec = PcmDecoder("pcm_s16le")
    out, i = [], 0
    for size in [1, 2, 3, 5, 7, 1, 999, 4]:
        out.append(dec.decode(data[i:i + size]))
        i += size
    out.append(dec.decode(data[i:]))
    y = np.concatenate(out)
    assert y.size == x.size and dec.pending_bytes == 0
    assert np.max(np.abs(y - x)) < 2 / 32768 + 1e-6


def test_f32_partial_samples_and_nan():
    x = np.linspace(-1, 1, 10, dtype="<f4")
    dec = PcmDecoder("pcm_f32le")
    a = dec.decode(x.tobytes()[:7])
    assert a.size == 1 and dec.pending_bytes == 3
    b = dec.decode(x.tobytes()[7:])
    np.testing.assert_allclose(np.concatenate([a, b]), x)
    with pytest.raises(ProtocolError) as e:
        dec.decode(np.array([0.1, np.nan], dtype="<f4").tobytes())
    assert e.value.code == "invalid_audio"
    with pytest.raises(ProtocolError):
        dec.decode(np.array([np.inf], dtype="<f4").tobytes())


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_streaming_resampler_matches_tone_and_length(rate):
    t = np.arange(int(rate * 1.0)) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rs = Resampler(rate)
    chunks = [rs.process(x[i:i + 777]) for i in range(0, x.size, 777)] + [rs.process(np.zeros(0, np.float32), last=True)]
    y = np.concatenate(chunks)
    assert abs(y.size - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(y[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 440) < 3


def test_identity_at_16k():
    x = np.ones(10, np.float32)
    assert Resampler(16000).process(x) is x or np.array_equal(Resampler(16000).process(x), x)


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_expansion_matches_pythons_own_table(encoding):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # Python 3.11's G.711 codec: an independent reference
    every_byte = bytes(range(256))
    expand = audioop.ulaw2lin if encoding == "mulaw" else audioop.alaw2lin
    reference = np.frombuffer(expand(every_byte, 2), dtype="<i2").astype(np.float32) / 32768.0
    decoder = PcmDecoder(encoding)
    assert np.array_equal(decoder.decode(every_byte), reference)
    assert decoder.pending_bytes == 0


def test_pcm16_round_trip_rounds_to_the_nearest_step():
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 1 / 32767 * 0.6], dtype=np.float32)
    pcm = np.frombuffer(float_to_pcm16(samples), dtype="<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 32767, 1]
