"""The split generator: deterministic, disjoint, exact in size; the `allspark splits` command."""
import pytest

from PIL import Image

from allspark.cli import main
from allspark.data.splits import make_split, parse_fraction, split_lines


def _lines(n):
    return [f"JPEGImages/{i:04d}.jpg SegmentationClass/{i:04d}.png" for i in range(n)]


@pytest.mark.parametrize("count", [1, 92, 183, 366])
def test_count_exact_disjoint_covering(count):
    lines = _lines(400)
    labeled, unlabeled = split_lines(lines, count=count, seed=3)
    assert len(labeled) == count and len(unlabeled) == 400 - count
    assert not set(labeled) & set(unlabeled)
    assert sorted(labeled + unlabeled) == sorted(lines)
    assert labeled == [line for line in lines if line in set(labeled)]  # input order kept


def test_deterministic_per_seed():
    lines = _lines(300)
    assert split_lines(lines, count=40, seed=7) == split_lines(lines, count=40, seed=7)
    assert split_lines(lines, count=40, seed=7)[0] != split_lines(lines, count=40, seed=8)[0]


@pytest.mark.parametrize("fraction,expected", [("1/16", 662), ("1/8", 1323), ("1/4", 2646), ("0.5", 5291)])
def test_fraction_rounds_up_like_the_published_splits(fraction, expected):
    labeled, unlabeled = split_lines(_lines(10582), fraction=fraction)
    assert len(labeled) == expected and len(unlabeled) == 10582 - expected


def test_duplicate_images_never_in_both_lists():
    lines = _lines(50) + _lines(50)[:20]
    labeled, unlabeled = split_lines(lines, count=25, seed=1)
    images = [line.split()[0] for line in labeled], [line.split()[0] for line in unlabeled]
    assert len(labeled) == 25 and len(unlabeled) == 25
    assert not set(images[0]) & set(images[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"count must be in \[1, 10\]"):
        split_lines(_lines(10), count=11)
    with pytest.raises(ValueError, match="exactly one"):
        split_lines(_lines(10), count=2, fraction="1/2")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        parse_fraction("3/2")
    with pytest.raises(ValueError, match="like 1/8"):
        parse_fraction("an eighth")


def test_make_split_writes_and_refuses_overwrite(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{line}\n" for line in _lines(30)))
    labeled, unlabeled = make_split(train, tmp_path / "split", count=6, seed=0)
    assert len(labeled.read_text().splitlines()) == 6 and len(unlabeled.read_text().splitlines()) == 24
    with pytest.raises(FileExistsError, match="labeled.txt"):
        make_split(train, tmp_path / "split", count=6)
    make_split(train, tmp_path / "split", count=10, force=True)
    assert len(labeled.read_text().splitlines()) == 10


def test_cli(tmp_path, capsys):
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{line}\n" for line in _lines(64)))
    with pytest.raises(SystemExit) as exit_info:
        main(["splits", str(train), "--out", str(tmp_path / "s"), "--fraction", "1/8", "--seed", "2"])
    assert exit_info.value.code == 0
    assert len((tmp_path / "s/labeled.txt").read_text().splitlines()) == 8
    with pytest.raises(SystemExit) as exit_info:
        main(["splits", str(train), "--out", str(tmp_path / "s"), "--count", "3"])
    assert exit_info.value.code == 1
    assert "--force" in capsys.readouterr().err  # the error goes to stderr, in one line


def test_cli_from_a_layout_tree(tmp_path):
    for i in range(10):
        for folder, mode in (("images", "RGB"), ("masks", "L")):
            (tmp_path / "data" / folder).mkdir(parents=True, exist_ok=True)
            Image.new(mode, (4, 4)).save(tmp_path / "data" / folder / f"{i}.png")
    (tmp_path / "data/classes.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["splits", str(tmp_path / "data"), "--layout", "folder", "--out", str(tmp_path / "s"), "--count", "3"])
    assert exit_info.value.code == 0
    assert (tmp_path / "s/train.txt").read_text().splitlines()[0] == "images/0.png masks/0.png"
    labeled = (tmp_path / "s/labeled.txt").read_text().splitlines()
    unlabeled = (tmp_path / "s/unlabeled.txt").read_text().splitlines()
    assert len(labeled) == 3 and len(unlabeled) == 7 and not set(labeled) & set(unlabeled)
