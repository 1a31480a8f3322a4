import numpy as np
import pytest

from kit import rle
from kit.cli import main
from kit.submission import (
    SubmissionError,
    read_submission,
    validate_submission,
    write_submission,
)


def _write(path, text):
    path.write_text(text)
    return path


def test_sample_submission_is_valid(demo_dir):
    ink = validate_submission(demo_dir / "sample_submission.csv", demo_dir / "test")
    assert ink == {"a": 1, "b": 1}
    # The dataset root is accepted too (its test/ is used).
    assert validate_submission(demo_dir / "sample_submission.csv", demo_dir) == ink


def test_solution_roundtrips_through_write_and_validate(demo_dir, tmp_path):
    from kit.data.fragment import Fragment

    rows = {}
    for fid in ("b", "a"):
        shape = Fragment(demo_dir / "test" / fid).shape
        mask = np.zeros(shape, np.uint8)
        mask[0, 0] = mask[-1, -1] = 1  # first and last pixel
        rows[fid] = rle.encode(mask)
    out = write_submission(
        rows, tmp_path / "sub" / "submission.csv", sample=demo_dir / "sample_submission.csv"
    )
    assert list(read_submission(out)) == ["a", "b"]  # sample order, not insertion order
    assert validate_submission(out, demo_dir / "test") == {"a": 2, "b": 2}
    assert not list(out.parent.glob("*.tmp"))


def test_long_rle_fields_are_read(tmp_path):
    text = " ".join(f"{1 + 2 * i} 1" for i in range(100_000))  # ~1.3 MB, above csv's default limit
    path = write_submission({"a": text}, tmp_path / "s.csv")
    assert read_submission(path)["a"] == text


def test_write_rejects_ids_outside_the_sample(demo_dir, tmp_path):
    with pytest.raises(SubmissionError, match=r"\['c'\]"):
        write_submission(
            {"a": "", "c": ""}, tmp_path / "s.csv", sample=demo_dir / "sample_submission.csv"
        )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("Id,Pred\na,1 1\nb,1 1\n", "header must be exactly Id,Predicted"),
        ("Id,Predicted\na,1 1\n", r"missing \['b'\]"),
        ("Id,Predicted\na,1 1\nb,1 1\nc,1 1\n", r"unexpected \['c'\]"),
        ("Id,Predicted\na,1 1\na,1 1\nb,1 1\n", "id a appears twice"),
        ("Id,Predicted\na,1 1 5\nb,1 1\n", "id a .*odd number"),
        ("Id,Predicted\na,0 1\nb,1 1\n", "id a .*not positive"),
        ("Id,Predicted\na,1 1\nb,1 -1\n", "id b .*not positive"),
        ("Id,Predicted\na,9 1 3 1\nb,1 1\n", "id a .*not sorted"),
        ("Id,Predicted\na,1 5 3 1\nb,1 1\n", "id a .*overlaps"),
        ("Id,Predicted\na,1 1\nb,1 99999999\n", "id b .*past the last pixel"),
        ("Id,Predicted\na,1 x\nb,1 1\n", "id a .*not an integer"),
    ],
)
def test_validator_rejects_with_reason(demo_dir, tmp_path, body, reason):
    path = _write(tmp_path / "s.csv", body)
    with pytest.raises(SubmissionError, match=reason):
        validate_submission(path, demo_dir / "test")


def test_out_of_bounds_uses_each_fragments_own_size(demo_dir, tmp_path):
    from kit.data.fragment import Fragment

    h, w = Fragment(demo_dir / "test" / "a").shape
    ok = _write(tmp_path / "ok.csv", f"Id,Predicted\na,{h * w} 1\nb,\n")
    assert validate_submission(ok, demo_dir / "test") == {"a": 1, "b": 0}
    bad = _write(tmp_path / "bad.csv", f"Id,Predicted\na,{h * w} 2\nb,\n")
    with pytest.raises(SubmissionError, match=f"id a \\({h}×{w}\\)"):
        validate_submission(bad, demo_dir / "test")


def test_cli_validate(demo_dir, tmp_path, capsys):
    assert (
        main(
            ["validate", str(demo_dir / "sample_submission.csv"), "--data", str(demo_dir / "test")]
        )
        == 0
    )
    assert "is valid" in capsys.readouterr().out
    broken = _write(tmp_path / "broken.csv", "Id,Predicted\na,3 1 1 1\nb,1 1\n")
    assert main(["validate", str(broken), "--data", str(demo_dir / "test")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "id a" in err and "not sorted" in err


def test_write_refuses_to_drop_an_id_of_the_sample(demo_dir, tmp_path):
    sample = demo_dir / "sample_submission.csv"
    ids = list(read_submission(sample))
    with pytest.raises(
        SubmissionError, match=rf"lists ids \['{ids[-1]}'\] that have no prediction"
    ):
        write_submission([(i, "") for i in ids[:-1]], tmp_path / "s.csv", sample=sample)
    assert not (tmp_path / "s.csv").exists()
