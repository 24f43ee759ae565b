import hashlib

import pytest

from alignment.hashing import file_sha256, weight_files, weights_sha256


def test_digest_is_sha256sum_listing_of_weight_files(tmp_path):
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"second")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"first")
    (tmp_path / "pytorch_model.bin").write_bytes(b"ignored: safetensors take precedence")
    (tmp_path / "config.json").write_text("{}")
    listing = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in [
        ("model-00001-of-00002.safetensors", b"first"), ("model-00002-of-00002.safetensors", b"second")])
    assert weights_sha256(tmp_path) == hashlib.sha256(listing.encode()).hexdigest()
    assert [p.name for p in weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]


def test_digest_changes_with_one_byte_and_ignores_config(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"abc")
    before = weights_sha256(tmp_path)
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert weights_sha256(tmp_path) == before
    weights.write_bytes(b"abd")
    assert weights_sha256(tmp_path) != before
    assert file_sha256(weights) == hashlib.sha256(b"abd").hexdigest()


def test_folder_without_weights_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_sha256(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights_sha256(tmp_path / "missing")
