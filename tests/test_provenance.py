"""Provenance: what a derived file was made from, and the difference named when it changed."""

import os

from kit.config import load_config
from kit.data.folds import Region
from kit.data.fragment import Fragment
from kit.provenance import differences, file_digest, fragment_identity, training_provenance


def test_fragment_identity_changes_when_any_of_its_files_does(demo_dir):
    fragment = Fragment(demo_dir / "train" / "1")
    before = fragment_identity(fragment)
    assert before == fragment_identity(Fragment(demo_dir / "train" / "1"))
    assert len(before["files"]) == fragment.n_slices + 3  # slices, mask, labels, ir
    mask = fragment.files.mask
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    try:
        assert fragment_identity(fragment) != before
    finally:
        os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_training_provenance_names_what_differs(demo_dir, tmp_path):
    fragments = [Fragment(demo_dir / "train" / i) for i in ("1", "2")]
    regions = [Region("1", 0, 0.0, 1.0), Region("2", 1, 0.0, 1.0)]
    config = load_config("cpu-demo")
    old = training_provenance(config, fold=0, regions=regions, fragments=fragments)
    assert old == training_provenance(config, fold=0, regions=regions, fragments=fragments)
    new = training_provenance(
        load_config("cpu-demo", ["train.lr=0.01"]), fold=1, regions=regions, fragments=fragments
    )
    lr = config.train.lr
    assert differences(old, new) == [f"config.train.lr: {lr} -> 0.01", "fold: 0 -> 1"]
    changed = {**old, "data": {**old["data"], "2": {"shape": [1, 1], "files": {}}}}
    assert differences(old, changed) == ["data.2 files changed"]


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "x.bin"
    import hashlib

    path.write_bytes(b"inkkit" * 1_000_000)
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
