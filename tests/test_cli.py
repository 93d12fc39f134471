"""The command line refuses bad numbers by value, naming the option, before any work: a
usage error (exit status 2), not a traceback, a hang or a silently different run."""

import re

import pytest

from compute.__main__ import main
from mambapanel import data

EXTRACT = ["extract", "--out", "never-written"]
TRAIN = ["train", "--out", "never-written.pth"]


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        ([*EXTRACT, "--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
        ([*EXTRACT, "--n", "-1"], "argument --n: expected an integer >= 1, got '-1'"),
        ([*EXTRACT, "--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
        ([*EXTRACT, "--shard-size", "0"], "argument --shard-size: expected an integer >= 1"),
        ([*EXTRACT, "--workers", "0"], "argument --workers: expected an integer >= 1"),
        ([*EXTRACT, "--size", "0"], "argument --size: expected an integer >= 1, got '0'"),
        ([*EXTRACT, "--n", "two"], "argument --n: expected an integer >= 1, got 'two'"),
        (["reduce", "run", "--seed", "-1"], "argument --seed: expected 0..4294967295, got"),
        ([*TRAIN, "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
        ([*TRAIN, "--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
        ([*TRAIN, "--size", "0"], "argument --size: expected an integer >= 1, got '0'"),
        ([*TRAIN, "--lr", "0"], "argument --lr: expected a number > 0, got '0'"),
        ([*TRAIN, "--lr", "nan"], "argument --lr: expected a number > 0, got 'nan'"),
        (["demo", "--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
        (["demo", "--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
        (["demo", "--port", "0"], "argument --port: expected 1..65535, got '0'"),
        (["serve", "run", "--port", "65536"], "argument --port: expected 1..65535, got '65536'"),
    ],
)
def test_bad_numbers_are_refused_by_name(argv, refused, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert f"error: {refused}" in capsys.readouterr().err


def test_select_images_refuses_n_below_one():
    for n in (0, -1):
        with pytest.raises(
            data.ImageSourceError, match=f"photos: n must be at least 1 image .*{n}"
        ):
            data.select_images("photos", n)
    assert len(data.select_images("photos", 1).images) == 1


@pytest.mark.parametrize("where", ["read-only", "a-file"])
def test_outputs_that_cannot_be_written_are_named_errors(
    where, small_run, read_only_folder, tmp_path, capsys
):
    """extract, findings and train: one line naming the output, exit 2, no traceback, before
    any work (a read-only extract output fails before its cluster starts)."""
    (tmp_path / "file").write_text("x")
    parent = read_only_folder if where == "read-only" else tmp_path / "file"
    expected = r"cannot (write in|create the folder)" if where == "read-only" else "is a file;"
    commands = [
        ["extract", "--images", "photos", "--n", "1", "--size", "32", "--out", f"{parent}/run"],
        ["findings", str(small_run), "--out", f"{parent}/report"],
        ["train", "--epochs", "1", "--out", f"{parent}/model.pth"],
    ]
    if where == "a-file":  # findings --out naming a regular file
        commands.append(["findings", str(small_run), "--out", str(tmp_path / "file")])
    for argv in commands:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("error: ") and re.search(expected, error), (argv, error)
        assert "Traceback" not in error


def test_a_bug_is_not_reported_as_a_user_error(monkeypatch):
    """Only MambapanelError is a one-line user error: any other exception, a ValueError
    included, ends in its traceback."""
    import compute.__main__ as cli

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "reduce", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["reduce", "some-run"])
