"""The eager loader's decoders: PyAV seeks to the keyframe before the clip and returns exactly the frames a
decode from the start gives; the peers (torchcodec, decord) return the same frames where installed."""
import av
import numpy as np
import pytest

from amd_fast.data.decoders import DecodeError, decode_pyav, get_decoder
from amd_fast.data.shards import open_shards, read_member
from amd_fast.errors import InputError
from tests.shard_fixtures import make_video


def _all_frames(data: bytes) -> np.ndarray:
    import io

    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def _first_video(shards):
    s = open_shards(shards, "train").samples[0]
    return read_member(s.tar, s.video)


INDEX_SETS = [[0, 2, 4, 6], [21, 23, 25, 27], [24, 24, 25], [9, 17, 25, 31], [30, 31, 31, 31], [31]]


@pytest.mark.parametrize("fixture", ["synthetic_shards", "synthetic_shards_h264"])
def test_seeking_gives_the_frames_of_a_decode_from_the_start(request, fixture):
    data = _first_video(request.getfixturevalue(fixture))  # 32 frames, GOP 8 (VP9 webm / H.264 mp4 B-frames)
    full = _all_frames(data)
    for idx in INDEX_SETS:
        stats = {}
        got = decode_pyav(data, idx, stats=stats)
        assert np.array_equal(got, full[idx]), (fixture, idx)
        assert stats["first"] == idx[0] // 8 * 8  # decoding started at the keyframe before the clip
        assert stats["decoded"] == max(idx) - stats["first"] + 1


def test_indices_past_the_end_repeat_the_last_frame(tmp_path):
    data = make_video(tmp_path / "v.webm", frames=10, size=32, codec="vp9").read_bytes()
    full = _all_frames(data)
    got = decode_pyav(data, [8, 9, 12, 15])
    assert np.array_equal(got, full[[8, 9, 9, 9]])


def test_garbage_is_a_decode_error():
    with pytest.raises(DecodeError):
        decode_pyav(b"\x1a\x45\xdf\xa3" + bytes(500), [0, 1])


@pytest.mark.parametrize("name", ["torchcodec", "decord"])
@pytest.mark.parametrize("fixture", ["synthetic_shards", "synthetic_shards_h264"])
def test_peer_decoders_match_pyav(request, name, fixture):
    try:
        decode = get_decoder(name)
    except InputError as e:
        pytest.skip(str(e))
    data = _first_video(request.getfixturevalue(fixture))
    for idx in INDEX_SETS:
        got = np.asarray(decode(data, idx))
        assert got.shape == (len(idx), 80, 80, 3)
        assert np.abs(got.astype(int) - decode_pyav(data, idx).astype(int)).max() <= 2, (name, idx)


def test_a_missing_decoder_package_names_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_decord(name, *args, **kwargs):
        if name.split(".")[0] == "decord":
            raise ImportError("No module named 'decord'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_decord)
    with pytest.raises(InputError, match="pip install decord"):
        get_decoder("decord")
