"""Dataset discovery: layouts, class matching, hidden files, split determinism, early errors."""

from __future__ import annotations

import pytest

from transferkit.data.discover import discover, stratified_split
from transferkit.errors import UserError

from helpers import make_dataset, make_image


def test_classes_sorted_and_matched_by_name(tmp_path):
    root = make_dataset(tmp_path / "d", classes=("red", "blue", "green"))
    split = discover(root)
    assert split.classes == ["blue", "green", "red"]
    assert split.val_source == "folder"
    assert {s.label for s in split.val} == {0, 1, 2}
    assert all(split.classes[s.label] in s.path for s in split.train + split.val)


def test_class_mismatch_is_one_error_listing_both_sides(tmp_path):
    root = make_dataset(tmp_path / "d")
    make_image(root / "train" / "green" / "g.png", (0, 255, 0))
    make_image(root / "val" / "yellow" / "y.png", (255, 255, 0))
    with pytest.raises(UserError) as exc:
        discover(root)
    msg = str(exc.value)
    assert "only in train: green" in msg and "only in val: yellow" in msg and "\n" not in msg


def test_hidden_files_and_folders_ignored(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "red" / ".DS_Store").write_bytes(b"\x00\x01")
    make_image(root / "train" / "red" / ".ipynb_checkpoints" / "x.png", (0, 0, 0))
    make_image(root / "train" / ".git" / "y.png", (0, 0, 0))
    split = discover(root)
    assert split.classes == ["blue", "red"]
    assert not any("/." in s.path for s in split.train)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda r: None, "not found"),
        (lambda r: make_image(r / "train" / "only" / "a.png", (0, 0, 0)), "at least 2 class folders"),
        (lambda r: (make_image(r / "train" / "a" / "a.png", (0, 0, 0)), (r / "train" / "b").mkdir()), "empty class"),
    ],
)
def test_layout_errors_are_one_line(tmp_path, build, message):
    root = tmp_path / "d"
    build(root)
    with pytest.raises(UserError, match=message) as exc:
        discover(root)
    assert "\n" not in str(exc.value)


def test_no_val_folder_gives_stratified_seeded_split(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=10, with_val=False)
    a, b, c = discover(root, 0.2, seed=1), discover(root, 0.2, seed=1), discover(root, 0.2, seed=2)
    assert a.val_source == "split"
    assert [s.path for s in a.val] == [s.path for s in b.val]
    assert [s.path for s in a.val] != [s.path for s in c.val]
    assert sorted(s.label for s in a.val) == [0, 0, 1, 1]  # 20% of each class
    assert not {s.path for s in a.val} & {s.path for s in a.train}


def test_class_folders_at_root(tmp_path):
    make_image(tmp_path / "d" / "cats" / "1.png", (1, 1, 1))
    make_image(tmp_path / "d" / "cats" / "2.png", (1, 1, 1))
    make_image(tmp_path / "d" / "dogs" / "1.png", (2, 2, 2))
    make_image(tmp_path / "d" / "dogs" / "2.png", (2, 2, 2))
    split = discover(tmp_path / "d", 0.5)
    assert split.classes == ["cats", "dogs"] and len(split.val) == 2


def test_split_keeps_a_training_image_per_class():
    mask = stratified_split([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2], 0.5, 0)
    assert mask[:2].sum() == 1 and mask[10] == False  # noqa: E712 - numpy bool
