"""The export schema on disk: ``save_export`` / ``load_export`` round trip, extra keys, atomic writes."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from mvmae.extract import export
from mvmae.extract.export import SCHEMA_KEYS, load_export, save_export
from mvmae.extract.video import VideoFields

T, H, W, GRID, K = 7, 36, 52, 8, 2  # frames, source px, cell px, I-frames
h, w = -(-H // GRID), -(-W // GRID)  # ceil: 5 x 7 cells


def make_fields(seed: int = 0) -> VideoFields:
    rng = np.random.default_rng(seed)
    valid = rng.random((T, h, w)) > 0.3  # (T, h, w)
    valid[0] = False  # an I-frame has no vectors
    mv = rng.normal(0, 3, (T, 2, h, w)).astype(np.float32) * valid[:, None]  # (T, 2, h, w) px/frame
    return VideoFields(
        mv=mv,
        valid=valid,
        frame_types=np.frombuffer(b"IPBBPIP", np.uint8).copy(),
        iframes=rng.integers(0, 256, (K, 20, 29, 3), dtype=np.uint8),
        iframe_index=np.array([0, 5], np.int64),
        grid=GRID,
        fps=29.97,
        size=(H, W),
        meta={"method": "resolved", "codec": "h264", "frames_lost": 0, "warnings": ["a", "b"],
              "nested": {"x": [1, 2.5]}},
    )


def test_round_trip(tmp_path) -> None:
    fields = make_fields()
    path = save_export(tmp_path / "clip.npz", fields)
    assert path == tmp_path / "clip.npz" and path.is_file()
    back = load_export(path)
    for key in ("mv", "valid", "frame_types", "iframes", "iframe_index"):
        a, b = getattr(fields, key), getattr(back, key)
        assert b.dtype == a.dtype and b.shape == a.shape, key
        np.testing.assert_array_equal(b, a, err_msg=key)
    assert back.grid == GRID and isinstance(back.grid, int)
    assert back.fps == pytest.approx(29.97) and isinstance(back.fps, float)
    assert back.size == (H, W)
    assert back.meta == fields.meta
    assert back.num_frames == T


def test_file_layout_is_the_schema(tmp_path) -> None:
    """What readers without mvmae see: exactly the schema keys with the documented dtypes."""
    path = save_export(tmp_path / "clip.npz", make_fields())
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == set(SCHEMA_KEYS)
        assert z["mv"].dtype == np.float32 and z["mv"].shape == (T, 2, h, w)
        assert z["valid"].dtype == np.bool_ and z["valid"].shape == (T, h, w)
        assert z["frame_types"].dtype == np.uint8 and bytes(z["frame_types"]) == b"IPBBPIP"
        assert z["iframes"].dtype == np.uint8 and z["iframes"].shape == (K, 20, 29, 3)
        assert z["iframe_index"].dtype == np.int64 and z["iframe_index"].tolist() == [0, 5]
        assert z["grid"].shape == () and np.issubdtype(z["grid"].dtype, np.integer) and int(z["grid"]) == GRID
        assert z["fps"].shape == () and np.issubdtype(z["fps"].dtype, np.floating)
        assert np.issubdtype(z["size"].dtype, np.integer) and z["size"].tolist() == [H, W]
        assert z["meta"].shape == () and z["meta"].dtype.kind == "U"
        assert json.loads(str(z["meta"]))["method"] == "resolved"


def test_extra_keys_land_in_meta(tmp_path) -> None:
    path = save_export(tmp_path / "clip.npz", make_fields(), extra={"source": "clips/a b.mp4", "label": 7})
    with np.load(path, allow_pickle=False) as z:
        assert {"source", "label"} <= set(z.files)
    back = load_export(path)
    assert back.meta["source"] == "clips/a b.mp4"
    assert back.meta["label"] == 7 and isinstance(back.meta["label"], int)
    assert back.meta["method"] == "resolved"  # the stored meta is kept


def test_save_creates_parent_folders(tmp_path) -> None:
    path = save_export(tmp_path / "a" / "b" / "clip.npz", make_fields())
    assert load_export(path).num_frames == T


def test_export_is_a_deflated_npz(tmp_path) -> None:
    """numpy reads the file as it reads np.savez_compressed's: one deflated .npy per key."""
    fields = make_fields()
    path = save_export(tmp_path / "clip.npz", fields)
    with zipfile.ZipFile(path) as archive:
        assert {i.filename for i in archive.infolist()} == {f"{k}.npy" for k in SCHEMA_KEYS}
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["mv"], fields.mv)
        np.testing.assert_array_equal(z["iframes"], fields.iframes)


def _failing_savez(*args, **kwargs):
    file = args[0]
    file.write(b"PK\x03\x04 partial zip data")  # some bytes reach the temp file first
    raise OSError(28, "No space left on device")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(export, "write_npz", _failing_savez)
    with pytest.raises(OSError, match="No space left"):
        save_export(out_dir / "clip.npz", make_fields())
    assert list(out_dir.iterdir()) == []  # neither the target nor a temp file


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch) -> None:
    target = save_export(tmp_path / "clip.npz", make_fields(seed=1))
    before = target.read_bytes()
    monkeypatch.setattr(export, "write_npz", _failing_savez)
    with pytest.raises(OSError):
        save_export(target, make_fields(seed=2))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.npz"]


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch) -> None:
    """Ctrl-C (not an Exception) mid-write cleans up as well."""

    def interrupted(file, **arrays):
        file.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_export(tmp_path / "clip.npz", make_fields())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_file(tmp_path) -> None:
    target = save_export(tmp_path / "clip.npz", make_fields(seed=1))
    save_export(target, make_fields(seed=2))
    np.testing.assert_array_equal(load_export(target).mv, make_fields(seed=2).mv)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.npz"]


def test_load_rejects_other_npz(tmp_path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, mv=np.zeros((1, 2, 3, 4), np.float32), labels=np.arange(3))
    with pytest.raises(ValueError) as info:
        load_export(path)
    message = str(info.value)
    assert str(path) in message
    assert "valid" in message  # says what is missing
