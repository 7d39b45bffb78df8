"""scoring/: listing the inputs, and writing and resuming the results file (CSV and JSONL)."""

from __future__ import annotations

import json

import pytest

from scoring.inputs import InputError, list_inputs
from scoring.outputs import (
    OUTPUT_COLUMNS,
    OutputError,
    ResultRow,
    dump_rows,
    open_results,
    read_results,
)

MODEL = "models:/shapes/3"


def _row(path: str, *, error: str | None = None, model: str = MODEL) -> ResultRow:
    if error:
        return ResultRow(path=path, error=error, model=model, model_version="3", run_id="abc")
    return ResultRow(path=path, labels=["circle", "ring"], scores=[0.75, 0.125], model=model,
                     model_version="3", run_id="abc")  # fmt: skip


def test_a_folder_lists_its_images_at_any_depth_by_extension(tmp_path):
    for name in ("b.png", "a.JPG", "deep/er/c.webp", "deep/notes.txt", "d.jpeg.bak", "e.tiff"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a directory named like an image is not one
    found = list_inputs(tmp_path)
    assert found == sorted(
        str(tmp_path / n) for n in ("a.JPG", "b.png", "deep/er/c.webp", "e.tiff")
    )


def test_a_csv_lists_its_path_column_relative_to_itself_each_path_once(tmp_path):
    listing = tmp_path / "lists" / "images.csv"
    listing.parent.mkdir()
    listing.write_text("id,path\n1,a.png\n2,/abs/b.png\n3,a.png\n4,\n5,sub/c.png\n")
    assert list_inputs(listing) == [
        str(tmp_path / "lists" / "a.png"),
        "/abs/b.png",
        str(tmp_path / "lists" / "sub" / "c.png"),
    ]


def test_a_headerless_one_column_csv_is_a_list_of_paths(tmp_path):
    listing = tmp_path / "images.csv"
    listing.write_text("/x/a.png\n/x/b.png\n")
    assert list_inputs(listing) == ["/x/a.png", "/x/b.png"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("images.csv", "id,file\n1,a.png\n", "no 'path' column"),
        ("images.txt", "a.png\n", "a folder of images or a .csv"),
        ("absent", None, "does not exist"),
    ],
)
def test_unusable_inputs_are_named(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        list_inputs(tmp_path / name)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_round_trip_and_a_reopened_file_knows_what_is_done(tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    rows = [_row("a.png"), _row('odd, "name"\n.png'), _row("bad.png", error="corrupt: x")]
    with open_results(out, model=MODEL) as results:
        assert results.done == frozenset()
        results.write(rows)
    read, keep = read_results(out.read_bytes(), kind=suffix[1:])
    assert read == rows and keep == out.stat().st_size
    with open_results(out, model=MODEL) as results:
        assert results.done == {row.path for row in rows}
    assert out.read_text() == dump_rows(rows, kind=suffix[1:])  # reopening wrote nothing


def test_the_file_formats_are_what_the_docs_say(tmp_path):
    rows = [_row("a.png"), _row("b.png", error="not a decodable image: empty upload")]
    csv_text = dump_rows(rows, kind="csv").splitlines()
    assert csv_text[0] == ",".join(OUTPUT_COLUMNS)
    assert csv_text[1] == 'a.png,"[""circle"", ""ring""]","[0.75, 0.125]",,models:/shapes/3,3,abc'
    assert csv_text[2] == "b.png,[],[],not a decodable image: empty upload,models:/shapes/3,3,abc"
    first, second = (json.loads(line) for line in dump_rows(rows, kind="jsonl").splitlines())
    assert first == {"path": "a.png", "labels": ["circle", "ring"], "scores": [0.75, 0.125],
                     "error": None, "model": MODEL, "model_version": "3",
                     "run_id": "abc"}  # fmt: skip
    assert second["labels"] == [] and second["error"].startswith("not a decodable")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("cut", ["mid-row", "mid-quote", "after-newline-of-half-row"])
def test_a_crash_cut_last_row_is_dropped_and_the_run_appends_after_it(tmp_path, suffix, cut):
    out = tmp_path / f"results{suffix}"
    full = dump_rows([_row("a.png"), _row('b, "c".png')], kind=suffix[1:])
    last = full.rstrip("\n").rindex("\n") + 1  # where the last row starts
    cuts = {
        "mid-row": full[: last + 5],  # no newline: a partial line
        "mid-quote": full[: last + 2],
        # A half row that still ends in a newline (a torn write): unreadable, so dropped too.
        "after-newline-of-half-row": full[: last + 4] + "\n",
    }
    out.write_text(cuts[cut])
    with open_results(out, model=MODEL) as results:
        assert results.done == {"a.png"}
        results.write([_row('b, "c".png')])
    assert out.read_text() == full


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_unreadable_row_before_the_last_stops_the_resume(tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    lines = dump_rows([_row("a.png"), _row("b.png")], kind=suffix[1:]).splitlines(keepends=True)
    lines.insert(-1, "garbage\n")
    out.write_text("".join(lines))
    with pytest.raises(OutputError, match="is not a result row"):
        open_results(out, model=MODEL)
    assert out.read_text() == "".join(lines)  # untouched


def test_results_of_another_model_or_another_header_are_not_mixed(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text(dump_rows([_row("a.png", model="models:/shapes/2")], kind="jsonl"))
    with pytest.raises(OutputError, match=r"holds results of \['models:/shapes/2'\]"):
        open_results(out, model=MODEL)
    other = tmp_path / "other.csv"
    other.write_text("path,label\na.png,x\n")
    with pytest.raises(OutputError, match="its header is"):
        open_results(other, model=MODEL)


def test_an_empty_or_header_only_file_starts_afresh(tmp_path):
    out = tmp_path / "results.csv"
    out.write_text(",".join(OUTPUT_COLUMNS)[:7])  # the header itself cut short
    with open_results(out, model=MODEL) as results:
        results.write([_row("a.png")])
    assert out.read_text() == dump_rows([_row("a.png")], kind="csv")


def test_only_csv_and_jsonl_outputs(tmp_path):
    with pytest.raises(OutputError, match="must end in one of"):
        open_results(tmp_path / "results.parquet", model=MODEL)
