"""The eager loader's decoders: PyAV seeks to the keyframe before the clip and returns exactly the frames a
decode from the start gives; the peers (torchcodec, decord) return the same frames where they can decode, and
where they cannot (not installed, FFmpeg's shared libraries missing) the loader refuses at build time."""
import av
import numpy as np
import pytest

from amd_fast.data import DataConfig, build_loader, decoders
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


@pytest.fixture
def fresh_probe():
    """decoder_problem() caches its answer per process: clear it around a test that fakes the machine."""
    decoders.decoder_problem.cache_clear()
    yield
    decoders.decoder_problem.cache_clear()


@pytest.mark.parametrize("name", ["torchcodec", "decord"])
@pytest.mark.parametrize("fixture", ["synthetic_shards", "synthetic_shards_h264"])
def test_peer_decoders_match_pyav(request, name, fixture):
    problem = decoders.decoder_problem(name)
    if problem is not None:  # e.g. torchcodec without FFmpeg's shared libraries: skipped with the fix, not failed
        pytest.skip(problem[1])
    decode = get_decoder(name)
    data = _first_video(request.getfixturevalue(fixture))
    for idx in INDEX_SETS:
        got = np.asarray(decode(data, idx))
        assert got.shape == (len(idx), 80, 80, 3)
        assert np.abs(got.astype(int) - decode_pyav(data, idx).astype(int)).max() <= 2, (name, idx)


def test_a_missing_decoder_package_names_the_install(monkeypatch, fresh_probe):
    import builtins

    real_import = builtins.__import__

    def no_decord(name, *args, **kwargs):
        if name.split(".")[0] == "decord":
            raise ImportError("No module named 'decord'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_decord)
    with pytest.raises(InputError, match=r"pip install decord.*data\.eager_decoder=pyav"):
        get_decoder("decord")
    assert decoders.decoder_problem("decord")[0] == "not installed"


FFMPEG_REFUSAL = r"^data\.eager_decoder=torchcodec cannot run here: FFmpeg shared libraries missing.*apt-get install ffmpeg.*data\.eager_decoder=pyav$"


@pytest.mark.skipif(decoders.decoder_problem("torchcodec") is None
                    or decoders.decoder_problem("torchcodec")[0] != decoders.FFMPEG_MISSING,
                    reason="needs torchcodec installed on a machine without FFmpeg's shared libraries")
def test_torchcodec_without_ffmpeg_libraries_is_refused_here(synthetic_shards):
    """The real thing, on a machine like a fresh CI box: torchcodec imports, its libraries do not load."""
    with pytest.raises(InputError, match=FFMPEG_REFUSAL):
        get_decoder("torchcodec")
    with pytest.raises(decoders.DecoderUnavailable, match=FFMPEG_REFUSAL):  # at build time, before any batch
        build_loader(DataConfig(shards=synthetic_shards, split="val", backend="eager", eager_decoder="torchcodec",
                                device="cpu", num_workers=0, batch_size=2, num_frames=4, input_size=32))


def test_a_peer_whose_libraries_do_not_load_is_refused_at_build_time_naming_apt_get(
        monkeypatch, fresh_probe, synthetic_shards):
    """Any machine: a peer that imports but fails its first decode (torchcodec's 'Could not load libtorchcodec')
    while no libavutil is found is refused with one line naming apt-get install ffmpeg, when the loader is
    built (the training loop never starts), and counted as 'FFmpeg shared libraries missing'."""
    def cannot_load(data, idx):
        raise decoders.DecodeError("Could not load libtorchcodec. Likely causes:")

    monkeypatch.setattr(decoders, "_import_peer", lambda name: None)
    monkeypatch.setitem(decoders._PEER_DECODE, "torchcodec", cannot_load)
    monkeypatch.setattr(decoders, "_ffmpeg_libraries_found", lambda: False)
    with pytest.raises(decoders.DecoderUnavailable, match=FFMPEG_REFUSAL) as e:
        build_loader(DataConfig(shards=synthetic_shards, split="val", backend="eager", eager_decoder="torchcodec",
                                device="cpu", num_workers=0, batch_size=2, num_frames=4, input_size=32))
    assert e.value.reason == decoders.FFMPEG_MISSING and "\n" not in str(e.value)
    # with the libraries present the same failure is another problem, and says so (no apt-get advice)
    decoders.decoder_problem.cache_clear()
    monkeypatch.setattr(decoders, "_ffmpeg_libraries_found", lambda: True)
    assert decoders.decoder_problem("torchcodec")[0] == "cannot decode here"


def test_the_probe_decodes_with_every_working_decoder(fresh_probe):
    """The probe clip is a real video: PyAV decodes its two frames, and every peer that is usable here
    passed the probe (so a usable verdict means a decode worked, not just an import)."""
    frames = decode_pyav(decoders.probe_video(), [0, 1])
    assert frames.shape == (2, 64, 64, 3)
    for name in ("torchcodec", "decord"):
        if decoders.decoder_problem(name) is None:
            assert np.asarray(get_decoder(name)(decoders.probe_video(), [0, 1])).shape == (2, 64, 64, 3)


def _encode(fmt: str, encoder: str, pix: str, frames: int = 20) -> bytes:
    import io

    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(encoder, rate=25)
        s.width = s.height = 64
        s.pix_fmt = pix
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


# (container, encoder, pixel format, whether its headers alone name the video's size)
CONTAINERS = [("mp4", "libx264", "yuv420p", True), ("webm", "libvpx-vp9", "yuv420p", True),
              ("matroska", "libx264", "yuv420p", True), ("avi", "mjpeg", "yuvj420p", True),
              ("mp4", "mpeg4", "yuv420p", False)]


@pytest.mark.parametrize("fmt,encoder,pix,headers_suffice", CONTAINERS)
def test_containers_open_from_their_headers_and_decode_the_same_frames(fmt, encoder, pix, headers_suffice):
    """The loader opens a container without FFmpeg's probe decode (it decoded the first keyframe only to learn the
    pixel format: ~2 ms per 320p video); where the headers do not give the frame size it opens it the usual way.
    Either way the frames are those of a plain decode from the start."""
    data = _encode(fmt, encoder, pix)
    with decoders._open_input(data) as c:
        probed = c.streams.video[0].codec_context.pix_fmt is not None  # set only by a probe decode
    assert probed != headers_suffice
    full = _all_frames(data)
    for idx in ([0, 5, 10], [3, 7, 15, 19], [19]):
        assert np.array_equal(decode_pyav(data, idx), full[idx]), (fmt, encoder, idx)
