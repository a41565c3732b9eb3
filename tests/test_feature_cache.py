"""The frozen-encoder feature cache: exact hits, bypass, LRU bound, disk safety, keys."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
from helpers.config import FAST, SAMPLE_RATE
from helpers.small_disk import small_disk

from xares.encoders import cache as cache_module
from xares.encoders.cache import FeatureCache, batch_variation, clip_id, encoder_fingerprint
from xares.encoders.contract import mask_from_lengths, normalise_output
from xares.encoders.dummy import DummyEncoder
from xares.encoders.mel import MelEncoder

# Lengths in samples: mel frames are 10 ms, stacked 4 → one frame per 640 samples.
LENGTHS = [8000, 12800, 3200, 16000]


def make_clips(lengths=LENGTHS, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator) * 0.1 for n in lengths]


def batch_of(clips: list[torch.Tensor], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded batch (``extra`` more samples than the longest clip) and its mask."""
    lengths = torch.tensor([len(c) for c in clips])
    width = int(lengths.max()) + extra
    audio = torch.zeros(len(clips), width)
    for row, clip in enumerate(clips):
        audio[row, : len(clip)] = clip
    return audio, mask_from_lengths(lengths, width)


class Counting:
    """``encode_fn`` over a real encoder that records how many rows and calls it served."""

    def __init__(self, encoder: torch.nn.Module):
        self.encoder = encoder.eval()
        self.calls: list[int] = []
        self.widths: list[int] = []

    def __call__(self, audio, mask):
        self.calls.append(audio.shape[0])
        self.widths.append(audio.shape[1])
        with torch.no_grad():
            return normalise_output(self.encoder(audio, mask), mask)


@pytest.fixture
def mel():
    return Counting(MelEncoder(n_mels=16, sample_rate=SAMPLE_RATE))


def valid_rows(features, mask) -> list[torch.Tensor]:
    return [features[row, : int(n)] for row, n in enumerate(mask.sum(-1))]


def test_hit_equals_miss_across_batch_compositions(mel):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    cache = FeatureCache("fp", memory_gb=0.01)
    audio, mask = batch_of(clips, extra=500)
    miss, miss_mask = cache.encode(mel, audio, mask, ids)
    # N_max is the longest valid row, not the encoder's padded width; padding is zero.
    assert miss.shape[1] == int(miss_mask.sum(-1).max())
    assert miss_mask.dtype == torch.long
    for row, n in enumerate(miss_mask.sum(-1).tolist()):
        assert not miss[row, n:].any()
    assert cache.stats["misses"] == 4 and cache.stats["hits"] == 0

    # The same clips again, reordered and regrouped: every row is a hit, equal to its miss.
    calls = len(mel.calls)
    order = [2, 0, 3, 1]
    hit, hit_mask = cache.encode(mel, *batch_of([clips[i] for i in order]), [ids[i] for i in order])
    assert len(mel.calls) == calls
    assert cache.stats["hits"] == 4
    misses = valid_rows(miss, miss_mask)
    for row, source in enumerate(order):
        assert torch.equal(valid_rows(hit, hit_mask)[row], misses[source])

    # A fresh cache seeing a clip alone computes what the first one stored from a mixed batch.
    alone = FeatureCache("fp", memory_gb=0.01)
    features, frame_mask = alone.encode(mel, *batch_of([clips[1]]), [ids[1]])
    assert torch.equal(valid_rows(features, frame_mask)[0], misses[1])


def test_misses_are_encoded_in_one_call_on_the_missed_rows_only(mel):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    cache = FeatureCache("fp", memory_gb=0.01)
    cache.encode(mel, *batch_of(clips[:2]), ids[:2])  # clips 0 and 1 now cached
    mel.calls.clear(), mel.widths.clear()
    # Clip 3 (the longest) is cached in the second call, so the missed row (clip 2) is encoded
    # alone and its audio trimmed to its own length, not the batch's.
    cache.encode(mel, *batch_of(clips[:3] + [clips[0]]), ids[:3] + [ids[0]])
    assert mel.calls == [1] and mel.widths == [len(clips[2])]
    # A clip repeated inside one batch (several targets of one clip) is encoded once.
    mel.calls.clear()
    features, frame_mask = cache.encode(mel, *batch_of([clips[3], clips[3]]), [ids[3], ids[3]])
    assert mel.calls == [1]
    assert torch.equal(*valid_rows(features, frame_mask))


def test_bypass_rows_are_encoded_but_never_stored(mel):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    cache = FeatureCache("fp", memory_gb=0.01)
    audio, mask = batch_of(clips)
    reference, reference_mask = mel(audio, mask)

    # No ids (or only None): the encoder's own output, untouched.
    for no_ids in (None, [None] * 4):
        features, frame_mask = cache.encode(mel, audio, mask, no_ids)
        assert torch.equal(features, reference) and torch.equal(frame_mask, reference_mask)
    assert cache.stats["memory_entries"] == 0

    mel.calls.clear()
    mixed = [ids[0], None, ids[2], None]
    features, frame_mask = cache.encode(mel, audio, mask, mixed)
    assert mel.calls == [4]  # two misses and two bypassed rows, in one call
    assert cache.stats["bypassed"] == 2 and cache.stats["memory_entries"] == 2
    for row, expected in enumerate(valid_rows(reference, reference_mask)):
        assert torch.equal(valid_rows(features, frame_mask)[row], expected)

    mel.calls.clear()
    cache.encode(mel, audio, mask, mixed)
    assert mel.calls == [2]  # only the bypassed rows again


def test_lru_eviction_respects_the_byte_limit(mel):
    clips = make_clips([6400] * 6)
    ids = [clip_id(c) for c in clips]
    row_bytes = 11 * 64 * 4  # 11 frames of 64 float32 values
    cache = FeatureCache("fp", memory_gb=3.5 * row_bytes / (1 << 30))
    for clip, cid in zip(clips, ids):
        cache.encode(mel, *batch_of([clip]), [cid])
        assert cache.stats["memory_bytes"] <= cache.stats["memory_limit_bytes"]
    stats = cache.stats
    assert stats["memory_entries"] == 3 and stats["memory_bytes"] == 3 * row_bytes
    assert stats["evictions"] == 3
    # The least recently used went first: the last three are hits, the first is a miss again.
    mel.calls.clear()
    cache.encode(mel, *batch_of(clips[3:]), ids[3:])
    assert mel.calls == []
    cache.encode(mel, *batch_of(clips[:1]), ids[:1])
    assert mel.calls == [1]
    # A pickled cache (a spawned process, a deep copy of the model) carries no entries.
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.stats["memory_entries"] == 0 and copy.memory_limit == cache.memory_limit
    # memory_gb=0 keeps nothing in memory.
    empty = FeatureCache("fp", memory_gb=0)
    empty.encode(mel, *batch_of(clips[:2]), ids[:2])
    assert empty.stats["memory_entries"] == 0


def test_disk_round_trip_across_instances(mel, tmp_path):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    first = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    features, frame_mask = first.encode(mel, *batch_of(clips), ids)
    assert first.stats["disk_writes"] == 4
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 4 and not list(tmp_path.rglob("*.tmp"))
    assert (files[0].parent.parent / "context.json").is_file()
    assert files[0].parent.name == files[0].stem[:2]

    # Another process's view: a new instance, empty memory, same directory.
    mel.calls.clear()
    second = FeatureCache("fp", memory_gb=0.01, directory=tmp_path)
    again, again_mask = second.encode(mel, *batch_of(clips[::-1]), ids[::-1])
    assert mel.calls == [] and second.stats["disk_reads"] == 4
    for row, expected in enumerate(valid_rows(features, frame_mask)[::-1]):
        assert torch.equal(valid_rows(again, again_mask)[row], expected)
    # Promoted into memory: no second disk read.
    second.encode(mel, *batch_of(clips), ids)
    assert second.stats["disk_reads"] == 4 and second.stats["hits"] == 8

    # A clip repeated in a batch is read once.
    repeated = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    repeated.encode(mel, *batch_of(clips[:1] * 2), ids[:1] * 2)
    assert repeated.stats["disk_reads"] == 1 and repeated.stats["hits"] == 2

    # Ids that are not digests are hashed into file names and checked against the file.
    names = ["dataset/clip 1.flac", "dataset/clip 2.flac"]
    FeatureCache("fp", memory_gb=0, directory=tmp_path).encode(mel, *batch_of(clips[:2]), names)
    mel.calls.clear()
    named, named_mask = FeatureCache("fp", memory_gb=0, directory=tmp_path).encode(
        mel, *batch_of(clips[:2]), names
    )
    assert mel.calls == [] and len(list(tmp_path.rglob("*.pt"))) == 6
    assert torch.equal(valid_rows(named, named_mask)[1], valid_rows(features, frame_mask)[1])

    # Another encoder (fingerprint) never sees these files.
    other = FeatureCache("other", memory_gb=0, directory=tmp_path)
    other.encode(mel, *batch_of(clips[:1]), ids[:1])
    assert other.stats["misses"] == 1 and other.stats["disk_reads"] == 0


def test_corrupt_file_is_a_logged_miss_and_is_rewritten(mel, tmp_path, caplog):
    clip = make_clips([9600])[0]
    cid = clip_id(clip)
    first = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    expected, _ = first.encode(mel, *batch_of([clip]), [cid])
    (path,) = tmp_path.rglob("*.pt")
    path.write_bytes(path.read_bytes()[:100])  # torn

    second = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        for _ in range(2):
            path.write_bytes(b"not a tensor file")
            features, _ = second.encode(mel, *batch_of([clip]), [cid])
            assert torch.equal(features, expected)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()  # once per path
    assert second.stats["misses"] == 2 and second.stats["disk_errors"] == 2
    third = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    features, _ = third.encode(mel, *batch_of([clip]), [cid])
    assert third.stats["disk_reads"] == 1 and torch.equal(features, expected)


def flip_feature_bytes(path, count=16):
    """Flip ``count`` bytes in the middle of the features stored in ``path``; the file still
    unpickles. Returns the stored features as they were."""
    stored = torch.load(path, weights_only=True)["features"]
    raw = bytearray(path.read_bytes())
    start = raw.find(stored.numpy().tobytes())  # the tensor's bytes are stored uncompressed
    assert start >= 0, f"the features' bytes are not in {path}"
    middle = start + stored.numel() * stored.element_size() // 2
    for offset in range(middle, middle + count):
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))
    altered = torch.load(path, weights_only=True)["features"]
    assert altered.shape == stored.shape and not torch.equal(altered, stored)
    return stored


def test_a_bit_flip_in_a_cached_file_is_named_and_recomputed(mel, tmp_path, caplog):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    first = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    expected, expected_mask = first.encode(mel, *batch_of(clips), ids)
    path = first._path(first._context(torch.device("cpu")), ids[1])
    original = flip_feature_bytes(path)

    mel.calls.clear()
    second = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        features, frame_mask = second.encode(mel, *batch_of(clips), ids)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "checksum" in warnings[0]
    # Only the damaged clip was encoded again, and it equals what was computed the first time.
    assert mel.calls == [1] and second.stats["disk_errors"] == 1
    assert second.stats["disk_reads"] == 3
    assert torch.equal(features, expected) and torch.equal(frame_mask, expected_mask)
    assert torch.equal(valid_rows(features, frame_mask)[1], original)

    # The file was rewritten: a later reader gets it from disk, silently.
    caplog.clear()
    third = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        again, _ = third.encode(mel, *batch_of(clips), ids)
    assert third.stats["disk_reads"] == 4 and not caplog.records
    assert torch.equal(again, expected)


def test_a_file_without_a_checksum_is_not_trusted(mel, tmp_path):
    clip = make_clips([9600])[0]
    cid = clip_id(clip)
    first = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    expected, _ = first.encode(mel, *batch_of([clip]), [cid])
    (path,) = tmp_path.rglob("*.pt")
    record = torch.load(path, weights_only=True)
    del record["sha256"]
    torch.save(record, path)
    second = FeatureCache("fp", memory_gb=0, directory=tmp_path)
    features, _ = second.encode(mel, *batch_of([clip]), [cid])
    assert second.stats["disk_errors"] == 1 and torch.equal(features, expected)
    assert "sha256" in torch.load(path, weights_only=True)


def test_corrupted_cache_files_leave_a_runs_score_unchanged(make_cfg, tmp_path, caplog):
    from xares.run.train import train

    features = tmp_path / "features"
    quick = [*FAST, "logger=none", f"speed.feature_cache.dir={features}"]
    first = train(make_cfg(*quick, output_dir=tmp_path / "first"))
    files = sorted(features.rglob("*.pt"))
    assert len(files) > 2
    damaged = [files[0], files[len(files) // 2]]
    originals = [flip_feature_bytes(path) for path in damaged]

    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        second = train(make_cfg(*quick, output_dir=tmp_path / "second"))
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path, original in zip(damaged, originals):
        assert f"{path} is corrupt" in warned
        # Encoded again, in another batch than the first time: equal up to float rounding
        # (the padding of a batch moves the last bits), not the flipped bytes' garbage.
        rewritten = torch.load(path, weights_only=True)["features"]
        assert torch.allclose(rewritten, original, rtol=1e-5, atol=1e-5)
    assert second["overall"] == first["overall"]


def test_a_failed_write_leaves_no_file_that_looks_complete(mel, tmp_path, monkeypatch):
    clip = make_clips([9600])[0]
    cid = clip_id(clip)
    real_save = torch.save

    def save_then_die(record, file, error):
        real_save(record, file)
        file.flush()
        file.truncate(file.tell() // 2)  # half the bytes are on disk when the writer dies
        raise error

    cache = FeatureCache("fp", memory_gb=0.01, directory=tmp_path)
    monkeypatch.setattr(
        cache_module.torch, "save", lambda r, f: save_then_die(r, f, KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        cache.encode(mel, *batch_of([clip]), [cid])
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.tmp"))

    # An I/O error (full disk) costs only the disk copy: the batch is still served.
    cache = FeatureCache("fp", memory_gb=0.01, directory=tmp_path)
    monkeypatch.setattr(
        cache_module.torch, "save", lambda r, f: save_then_die(r, f, OSError("disk full"))
    )
    features, _ = cache.encode(mel, *batch_of([clip]), [cid])
    assert features.shape[0] == 1 and cache.stats["disk_errors"] == 1
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.tmp"))
    monkeypatch.setattr(cache_module.torch, "save", real_save)


def test_a_full_disk_costs_only_the_disk_copy(mel, tmp_path, caplog):
    clips = make_clips([16000] * 16)
    ids = [clip_id(c) for c in clips]
    reference, _ = FeatureCache("fp", memory_gb=0.01).encode(mel, *batch_of(clips), ids)
    with small_disk(tmp_path / "disk", size="48k") as disk:
        cache = FeatureCache("fp", memory_gb=0.01, directory=disk)
        with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
            for clip, cid in zip(clips, ids):
                cache.encode(mel, *batch_of([clip]), [cid])
        # torch.save raises RuntimeError (not OSError) when the disk fills up mid-file.
        assert cache.stats["disk_errors"] >= 1 and "could not be written" in caplog.text
        assert not list(disk.rglob("*.tmp"))
        for path in disk.rglob("*.pt"):
            assert torch.load(path, weights_only=True)["clip"] in ids
        features, _ = cache.encode(mel, *batch_of(clips), ids)
        assert torch.equal(features, reference)


def test_fingerprint_follows_weights_config_and_class():
    a, b = (
        DummyEncoder(output_dim=8, seed=1, sample_rate=SAMPLE_RATE),
        DummyEncoder(output_dim=8, seed=1, sample_rate=SAMPLE_RATE),
    )
    assert encoder_fingerprint(a, sample_rate=SAMPLE_RATE) == encoder_fingerprint(
        b, sample_rate=SAMPLE_RATE
    )
    assert encoder_fingerprint(
        a, {"x": 1, "y": [1, 2]}, sample_rate=SAMPLE_RATE
    ) == encoder_fingerprint(b, {"y": [1, 2], "x": 1}, sample_rate=SAMPLE_RATE)
    assert encoder_fingerprint(a, {"x": 1}, sample_rate=SAMPLE_RATE) != encoder_fingerprint(
        a, {"x": 2}, sample_rate=SAMPLE_RATE
    )
    assert encoder_fingerprint(a, sample_rate=16000) != encoder_fingerprint(a, sample_rate=8000)
    with torch.no_grad():
        b.table[3, 5] += 1e-3
    assert encoder_fingerprint(a, sample_rate=SAMPLE_RATE) != encoder_fingerprint(
        b, sample_rate=SAMPLE_RATE
    )
    # Parameters count too, and so does the class with identical tensors.
    linear = torch.nn.Linear(4, 4)
    changed = torch.nn.Linear(4, 4)
    changed.load_state_dict(linear.state_dict())
    assert encoder_fingerprint(linear, sample_rate=SAMPLE_RATE) == encoder_fingerprint(
        changed, sample_rate=SAMPLE_RATE
    )
    with torch.no_grad():
        changed.weight[0, 0] += 1
    assert encoder_fingerprint(linear, sample_rate=SAMPLE_RATE) != encoder_fingerprint(
        changed, sample_rate=SAMPLE_RATE
    )

    class Same(torch.nn.Linear):
        pass

    renamed = Same(4, 4)
    renamed.load_state_dict(linear.state_dict())
    assert encoder_fingerprint(linear, sample_rate=SAMPLE_RATE) != encoder_fingerprint(
        renamed, sample_rate=SAMPLE_RATE
    )


def test_clip_id_distinguishes_content_length_and_dtype():
    clip = make_clips([1600])[0]
    assert clip_id(clip) == clip_id(clip.clone())
    assert len(clip_id(clip)) == 40
    changed = clip.clone()
    changed[100] += 1e-6
    assert clip_id(changed) != clip_id(clip)
    assert clip_id(torch.cat([clip, torch.zeros(1)])) != clip_id(clip)
    assert clip_id(clip.double()) != clip_id(clip)
    assert clip_id(torch.zeros(4, dtype=torch.float32)) != clip_id(
        torch.zeros(2, dtype=torch.float64)
    )
    assert clip_id(torch.zeros(0)) != clip_id(torch.zeros(1))
    with pytest.raises(ValueError, match="1-D"):
        clip_id(clip[None])


def test_fp16_opt_in_halves_stored_bytes_and_hits_still_equal_misses(mel, tmp_path):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    exact = FeatureCache("fp", memory_gb=0.01)
    full, _ = exact.encode(mel, *batch_of(clips), ids)
    half = FeatureCache("fp", memory_gb=0.01, directory=tmp_path, dtype=torch.float16)
    miss, _ = half.encode(mel, *batch_of(clips), ids)
    assert full.dtype == torch.float32 and miss.dtype == torch.float16
    assert half.stats["memory_bytes"] * 2 == exact.stats["memory_bytes"]
    hit, _ = half.encode(mel, *batch_of(clips), ids)
    assert torch.equal(hit, miss)
    disk, _ = FeatureCache("fp", memory_gb=0, directory=tmp_path, dtype=torch.float16).encode(
        mel, *batch_of(clips), ids
    )
    assert torch.equal(disk, miss)
    # An exact cache on the same folder never reads the rounded features.
    assert FeatureCache("fp", directory=tmp_path).encode(mel, *batch_of(clips), ids)[0].dtype == (
        torch.float32
    )


def test_clear_errors():
    with pytest.raises(ValueError, match="clip ids for a batch"):
        FeatureCache("fp").encode(lambda a, m: None, torch.zeros(2, 10), None, ["a"])
    with pytest.raises(ValueError, match="CPU tensor"):
        clip_id(torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match="dtype"):
        FeatureCache("fp", dtype=torch.int8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_all_hit_batch_does_not_synchronise_with_the_gpu(mel):
    clips = make_clips()
    ids = [clip_id(c) for c in clips]
    mel.encoder.cuda()
    audio, mask = (t.cuda() for t in batch_of(clips))
    cache = FeatureCache("fp", memory_gb=0.01)
    miss, _ = cache.encode(mel, audio, mask, ids)  # misses may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        hit, hit_mask = cache.encode(mel, audio, mask, ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert hit.is_cuda and hit_mask.is_cuda and torch.equal(hit, miss)


def test_batch_variation_tells_batch_invariant_encoders_apart(mel):
    assert batch_variation(mel, sample_rate=SAMPLE_RATE) == 0.0
    encoder = Counting(DummyEncoder(output_dim=8, sample_rate=SAMPLE_RATE))
    assert batch_variation(encoder, sample_rate=SAMPLE_RATE) == 0.0

    def depends_on_padding(audio, mask):  # normalises over the padded width, not the clip
        features, frame_mask = mel(audio, mask)
        return features / audio.shape[1], frame_mask

    assert batch_variation(depends_on_padding, sample_rate=SAMPLE_RATE) > 0.0
