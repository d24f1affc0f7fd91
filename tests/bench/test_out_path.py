"""bench/out_path.py: a benchmark's --out is checked before its runs, and left as it was."""

from __future__ import annotations

import pytest

from tests.bench.loader import load_bench


def test_a_new_file_in_a_new_folder_is_not_left_behind(tmp_path):
    out = tmp_path / "new" / "result.json"
    assert load_bench("out_path").writable_out(out) == out
    assert out.parent.is_dir() and not out.exists()


def test_an_existing_file_keeps_its_contents(tmp_path):
    out = tmp_path / "result.json"
    out.write_text("the user's own")
    load_bench("out_path").writable_out(out)
    assert out.read_text() == "the user's own"


def test_a_folder_or_an_unwritable_place_is_one_line_naming_the_flag(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    check = load_bench("out_path").writable_out
    with pytest.raises(SystemExit, match=r"^--out .*: a folder; give a file path"):
        check(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    with pytest.raises(SystemExit, match=r"^--out .*: cannot make its folder"):
        check(blocker / "sub" / "result.json")
    with pytest.raises(SystemExit, match=r"^--out .*: not writable"):
        check(tmp_path / ("x" * 300 + ".json"))  # a name too long for the file system
    assert (tmp_path / "mine.txt").read_text() == "keep" and blocker.read_text() == "keep"
