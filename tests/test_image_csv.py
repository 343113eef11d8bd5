"""The CSV + image-folder datamodule: read modes, labels, caching and bad-input reports."""

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.io import write_jpeg, write_png
from torchvision.transforms import v2

import datamodules.deterministic_transforms as deterministic
import datamodules.image_csv as image_csv
from datamodules.base import default_num_workers
from datamodules.image_csv import ImageCSVDataModule
from datamodules.validation import CheckedFiles, DataValidationError
from errors import DataError
from tests.conftest import log_lines

DIGITS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def write_table(root: Path, rows: list[dict[str, object]], name: str = "labels.csv") -> Path:
    path = root / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_images(root: Path, count: int, labels: list[str], size: int = 6) -> Path:
    """``count`` small gray PNGs with labels cycling through ``labels``; returns the CSV."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        pixels = torch.full((1, size, size), i % 256, dtype=torch.uint8)
        write_png(pixels, str(root / f"img/{i}.png"))
        rows.append({"path": f"img/{i}.png", "label": labels[i % len(labels)]})
    return write_table(root, rows)


@pytest.fixture
def mixed_formats(tmp_path: Path) -> Path:
    """One file per storage format: 8-bit gray, RGB, RGBA and 16-bit gray PNGs, and a JPEG."""
    rgb = torch.zeros(3, 4, 5, dtype=torch.uint8)
    rgb[0] = 200
    write_png(torch.full((1, 4, 5), 90, dtype=torch.uint8), str(tmp_path / "gray.png"))
    write_png(rgb, str(tmp_path / "rgb.png"))
    Image.fromarray(np.full((4, 5, 4), (10, 20, 30, 128), dtype=np.uint8), "RGBA").save(
        tmp_path / "rgba.png")
    Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16)).save(tmp_path / "gray16.png")
    write_jpeg(rgb, str(tmp_path / "rgb.jpg"), quality=95)
    names = ["gray.png", "rgb.png", "rgba.png", "gray16.png", "rgb.jpg"]
    return write_table(tmp_path, [{"path": n, "label": n.split(".")[0], "split": "train"}
                                  for n in names])


@pytest.mark.parametrize(("mode", "channels"), [("GRAY", 1), ("RGB", 3)])
def test_every_file_format_is_read_with_the_requested_channels_as_uint8(
    mixed_formats: Path, mode: str, channels: int
) -> None:
    data = ImageCSVDataModule(mixed_formats, read_mode=mode, split_column="split",
                              train_transforms=torch.nn.Identity(), num_workers=0)
    data.setup("fit")
    dataset = data.datasets["train"]
    images = {dataset.paths[i].name: dataset[i][0] for i in range(len(dataset))}
    for name, image in images.items():
        assert image.dtype == torch.uint8, name
        assert image.shape == (channels, 4, 5), name
    assert int(images["gray16.png"].max()) == 255  # 16-bit full scale -> 8-bit full scale
    if mode == "RGB":
        assert images["gray.png"].unique().tolist() == [90]  # gray replicated to 3 channels
        assert images["rgb.png"][0].unique().tolist() == [200]


def test_unchanged_mode_keeps_the_alpha_channel(mixed_formats: Path) -> None:
    data = ImageCSVDataModule(mixed_formats, read_mode="UNCHANGED", split_column="split",
                              train_transforms=torch.nn.Identity(), num_workers=0, batch_size=1)
    data.setup("fit")
    dataset = data.datasets["train"]
    rgba = next(dataset[i][0] for i in range(len(dataset)) if dataset.paths[i].name == "rgba.png")
    assert rgba.shape == (4, 4, 5)
    assert rgba[:, 0, 0].tolist() == [10, 20, 30, 128]


def test_cached_images_are_decoded_once_before_training_and_never_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = make_images(tmp_path, 40, ["a", "b"])
    cached = ImageCSVDataModule(table, read_mode="GRAY", cache_images=True, num_workers=0,
                                batch_size=8)
    uncached = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, batch_size=8,
                                  cache_images=False)
    cached.setup("fit")
    uncached.setup("fit")

    opened: list[Path] = []
    real_load = image_csv.load_image
    monkeypatch.setattr(image_csv, "load_image", lambda p, m: opened.append(p) or real_load(p, m))
    for _epoch in range(2):
        for split in ("train", "val"):
            for _ in cached._loader(split):
                pass
    assert opened == []  # nothing read from disk in two epochs
    for _ in uncached.train_dataloader():
        pass
    assert len(opened) == len(uncached.datasets["train"])  # the control does read files


def test_cache_images_auto_caches_what_fits_the_budget_and_says_so(tmp_path: Path) -> None:
    # 40 6x6 gray images, decoded (40 * 36 bytes), then float32 after the default ToDtype
    # (40 * 36 * 4 bytes).
    table = make_images(tmp_path, 40, ["a", "b"])
    with log_lines() as lines:
        small = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0)
        small.setup("fit")
    assert small.cache_images is True and small.datasets["train"].cache is not None
    assert any("cache_images: auto: caching 40 images" in line for line in lines)

    with log_lines() as lines:
        over = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, cache_max_gb=1e-6)
        over.setup("fit")
    assert over.cache_images is False and over.datasets["train"].cache is None
    assert any("not caching 40 images (7.2 KB in memory, over the 1.0 KB budget); set "
               "cache_images: true to force it" in line for line in lines)

    forced = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, cache_images=True,
                                cache_max_gb=1e-6)
    with pytest.raises(DataError, match="more than cache_max_gb=1e-06"):
        forced.setup("fit")
    never = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, cache_images=False)
    never.setup("fit")
    assert never.datasets["train"].cache is None


def test_the_cache_budget_counts_what_an_upsampling_transform_makes_of_small_images(
    tmp_path: Path,
) -> None:
    # 40 6x6 gray images (1,440 bytes decoded) resized to 64x64 float32 (655,360 bytes): a
    # budget of 100 KB holds the decoded images but not what the cache would hold.
    table = make_images(tmp_path, 40, ["a", "b"])
    upsample = v2.Compose([v2.Resize(64), v2.ToDtype(torch.float32, scale=True)])
    with log_lines() as lines:
        over = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, cache_max_gb=1e-4,
                                  train_transforms=upsample, eval_transforms=upsample)
        over.setup("fit")
    assert over.cache_images is False
    assert any("not caching 40 images (656.8 KB in memory, over the 100.0 KB budget)" in line
               for line in lines)
    # The count is what the cache then holds, beside the decoded images while it is built.
    cached = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, cache_images=True,
                                train_transforms=upsample, eval_transforms=upsample)
    cached.setup("fit")
    held = sum(cached.datasets[split].cache.nbytes for split in ("train", "val", "test"))
    every_image = cached.image_paths(pd.concat(cached.split_tables.values()))
    assert held == 40 * 64 * 64 * 4
    assert cached.cached_bytes(every_image) == 40 * 6 * 6 + held


def test_loaders_use_no_workers_only_where_the_samples_are_ready_in_memory(
    tmp_path: Path
) -> None:
    table = make_images(tmp_path, 40, ["a", "b"])
    random_crop = v2.Compose([v2.RandomCrop(4), v2.ToDtype(torch.float32, scale=True)])

    def workers(**options: Any) -> dict[str, int]:
        data = ImageCSVDataModule(table, read_mode="GRAY", batch_size=8, **options)
        data.setup("fit")
        return {split: data._loader(split).num_workers for split in ("train", "val")}

    cpus = default_num_workers()
    with log_lines() as lines:
        assert workers() == {"train": 0, "val": 0}  # cached, deterministic: nothing to do
    assert any("num_workers: null: no loader workers, the samples are ready in memory" in line
               for line in lines)
    # Work left per sample: a random crop (train only), or files read each epoch.
    assert workers(train_transforms=random_crop) == {"train": cpus, "val": 0}
    assert workers(cache_images=False) == {"train": cpus, "val": cpus}
    assert workers(num_workers=1) == {"train": 1, "val": 1}  # a set value is kept


def test_an_unchanged_folder_is_not_checked_again_and_a_replaced_file_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamodules.validation as validation

    table = make_images(tmp_path, 30, ["a", "b"])
    decoded: list[str] = []
    real_decode = validation.decode_image
    def counting_decode(source: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(source, str):  # the check decodes a path; loading, a file's bytes
            decoded.append(source)
        return real_decode(source, *args, **kwargs)

    monkeypatch.setattr(validation, "decode_image", counting_decode)
    options = {"read_mode": "GRAY", "num_workers": 0, "cache_images": False}
    ImageCSVDataModule(table, **options).setup("fit")
    assert len(decoded) == 30
    ImageCSVDataModule(table, **options).setup("fit")  # the next run: nothing decoded
    assert len(decoded) == 30

    broken = tmp_path / "img" / "3.png"
    replacement = tmp_path / "replacement.png"
    replacement.write_bytes(broken.read_bytes()[:-20])  # truncated, as a bad copy would be
    replacement.replace(broken)
    with pytest.raises(DataValidationError) as error:
        ImageCSVDataModule(table, **options).setup("fit")
    assert len(decoded) == 31  # only the replaced file
    assert str(error.value).count("\n") == 0 and "row 3: cannot decode" in str(error.value)


@pytest.mark.parametrize("same_size", [True, False])
def test_the_next_run_loads_the_decoded_images_instead_of_decoding_and_notices_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_size: bool
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = make_images(tmp_path, 30, ["a", "b"])
    if not same_size:  # a list of images of their own sizes, not one stacked tensor
        write_png(torch.full((1, 9, 7), 50, dtype=torch.uint8), str(tmp_path / "img/4.png"))
    decoded: list[Path] = []
    real_load = image_csv.load_image
    monkeypatch.setattr(image_csv, "load_image",
                        lambda path, mode: decoded.append(path) or real_load(path, mode))
    options = {"read_mode": "GRAY", "num_workers": 0, "cache_images": True, "batch_size": 1}

    def images(data: ImageCSVDataModule) -> list[Tensor]:
        return [data.datasets[s][i][0] for s in ("train", "val", "test")
                for i in range(len(data.datasets[s]))]

    first = ImageCSVDataModule(table, **options)
    first.setup("fit")
    assert len(decoded) == 30
    (copy,) = (tmp_path / "cache" / "lightning-template").glob("decoded-*.pt")
    again = ImageCSVDataModule(table, **options)
    again.setup("fit")  # the next run (or another rank): nothing decoded, the same images
    assert len(decoded) == 30
    assert all(torch.equal(a, b) for a, b in zip(images(first), images(again), strict=True))

    write_png(torch.full((1, 6, 6), 200, dtype=torch.uint8), str(tmp_path / "img/7.png"))
    changed = ImageCSVDataModule(table, **options)
    changed.setup("fit")  # one file changed: decoded again, with the new pixels
    assert len(decoded) == 60
    assert torch.allclose(changed._cache[tmp_path / "img/7.png"], torch.tensor(200 / 255))
    (newer,) = (tmp_path / "cache" / "lightning-template").glob("decoded-*.pt")
    assert newer != copy  # the stale copy is gone, never to be loaded

    ImageCSVDataModule(table, **options, remember_checks=False).setup("fit")
    assert len(decoded) == 90  # nothing remembered: every file decoded


def test_each_image_file_is_stated_once_a_run_for_the_record_and_the_decoded_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a network file system a stat is a round trip: a million files stat'ed twice is
    # minutes before the first step.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = make_images(tmp_path, 24, ["a", "b"])
    stated: list[Path] = []
    real_stamp = CheckedFiles.stamp
    monkeypatch.setattr(CheckedFiles, "stamp",
                        staticmethod(lambda path: stated.append(path) or real_stamp(path)))
    options = {"read_mode": "GRAY", "num_workers": 0, "cache_images": True}
    for run in (1, 2):  # the first run checks and decodes, the next finds both remembered
        ImageCSVDataModule(table, **options).setup("fit")
        assert len(stated) == 24 * run and len(set(stated)) == 24
    assert len(list((tmp_path / "cache" / "lightning-template").glob("decoded-*.pt"))) == 1


def test_a_broken_file_dropped_by_skip_invalid_is_remembered_with_the_decoded_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table = make_images(tmp_path, 20, ["a", "b"])
    broken = tmp_path / "img" / "5.png"
    broken.write_bytes(broken.read_bytes()[:-20])  # a header, then truncated pixels
    decoded: list[Path] = []
    real_load = image_csv.load_image
    monkeypatch.setattr(image_csv, "load_image",
                        lambda path, mode: decoded.append(path) or real_load(path, mode))
    options = {"read_mode": "GRAY", "num_workers": 0, "cache_images": True,
               "skip_invalid": True}
    for run in (1, 2):
        caplog.clear()
        with caplog.at_level("WARNING"):
            data = ImageCSVDataModule(table, **options)
            data.setup("fit")
        assert len(decoded) == 20, run  # the second run decodes nothing
        assert sum(len(d) for d in data.datasets.values()) == 19, run
        assert "skip_invalid dropped 1 of 20 rows (first: cannot decode" in caplog.text, run


class CountingNormalize(v2.Normalize):
    calls = 0

    def forward(self, *inputs: Any) -> Any:
        CountingNormalize.calls += 1
        return super().forward(*inputs)


def test_deterministic_transforms_run_once_per_cached_image_not_every_epoch(
    tmp_path: Path
) -> None:
    table = make_images(tmp_path, 40, ["a", "b"])
    pipeline = v2.Compose([v2.ToDtype(torch.float32, scale=True), CountingNormalize([0.5], [0.2])])
    data = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, batch_size=8,
                              train_transforms=pipeline, eval_transforms=pipeline)
    CountingNormalize.calls = 0
    data.setup("fit")
    after_setup = CountingNormalize.calls
    # One call per split on its stacked images, one probe per split (the stacking check), one
    # blank image for the cache budget (one size).
    assert after_setup == 3 + 3 + 1
    for _ in range(3):
        for _batch in data.train_dataloader():
            pass
    assert CountingNormalize.calls == after_setup  # three epochs, no further call
    train = data.datasets["train"]
    for i in (0, len(train) - 1):  # the values a per-image call gives
        expected = pipeline(image_csv.load_image(train.paths[i], image_csv.ImageReadMode.GRAY))
        assert torch.equal(train[i][0], expected)
    assert not train.seeded and train.transform is None  # and no seed is drawn

    random_crop = v2.Compose([v2.RandomCrop(4), v2.ToDtype(torch.float32, scale=True)])
    data = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, batch_size=8,
                              train_transforms=random_crop)
    data.setup("fit")
    assert data.datasets["train"].seeded and data.datasets["train"].transform is random_crop


def test_a_cache_transformed_in_chunks_holds_each_images_own_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deterministic, "TRANSFORM_CHUNK", 8)  # 29 training images: 4 chunks
    table = make_images(tmp_path, 40, ["a", "b"])  # image i holds the value i
    pipeline = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.2])])
    data = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, train_transforms=pipeline,
                              eval_transforms=pipeline)
    data.setup("fit")
    for split in ("train", "val", "test"):
        dataset = data.datasets[split]
        assert dataset.transform is None and isinstance(dataset.cache, Tensor)
        for i in range(len(dataset)):
            expected = pipeline(image_csv.load_image(dataset.paths[i],
                                                     image_csv.ImageReadMode.GRAY))
            assert torch.equal(dataset[i][0], expected), (split, i)


@pytest.mark.parametrize("same_size", [True, False])
def test_cached_batches_are_the_same_images_and_targets_as_read_from_files(
    tmp_path: Path, same_size: bool
) -> None:
    table = make_images(tmp_path, 40, ["a", "b", "c"])
    if not same_size:  # a list cache, one tensor per image, read per sample
        write_png(torch.full((1, 6, 6), 7, dtype=torch.uint8), str(tmp_path / "img/0.png"))
        write_png(torch.full((1, 6, 9), 7, dtype=torch.uint8), str(tmp_path / "img/1.png"))
    batch_size = 1 if not same_size else 8  # images of two sizes cannot share a batch
    options = {"read_mode": "GRAY", "num_workers": 0, "batch_size": batch_size,
               "train_batch_transforms": torch.nn.Identity(), "sampler": "random",
               "val_fraction": 0.0, "test_fraction": 0.0,
               "split_column": None}
    cached = ImageCSVDataModule(table, cache_images=True, **options)
    uncached = ImageCSVDataModule(table, cache_images=False, **options)
    cached.setup("fit")
    uncached.setup("fit")
    assert isinstance(cached.datasets["train"].cache, torch.Tensor) == same_size
    for got, expected in zip(cached.train_dataloader(), uncached.train_dataloader(),
                             strict=True):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The dataset in a plain DataLoader (default_collate) gives the same batches too.
    plain = torch.utils.data.DataLoader(cached.datasets["train"], batch_size=batch_size)
    for got, expected in zip(plain, torch.utils.data.DataLoader(
            uncached.datasets["train"], batch_size=batch_size), strict=True):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_cache_that_would_not_fit_is_refused_with_the_size(tmp_path: Path) -> None:
    table = make_images(tmp_path, 4, ["a", "b"], size=100)
    data = ImageCSVDataModule(table, read_mode="RGB", cache_images=True, cache_max_gb=1e-6,
                              num_workers=0)
    with pytest.raises(ValueError, match=r"needs 0\.0 GB, more than cache_max_gb=1e-06"):
        data.setup("fit")


def corrupt(root: Path) -> Path:
    """A table whose rows break in every way an image folder can break."""
    table_path = make_images(root, 30, ["cat", "dog"], size=32)
    table = pd.read_csv(table_path)
    table["path"] = table["path"].str.removeprefix("img/")  # relative to image_root=root/img
    good = (root / "img/0.png").read_bytes()
    noise = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    write_png(noise, str(root / "img/1.png"))  # noise: the pixel data spans many bytes
    whole = (root / "img/1.png").read_bytes()
    (root / "img/1.png").write_bytes(whole[: len(whole) // 2])  # truncated mid pixel data
    (root / "img/2.png").write_text("not really a png")  # text file named .png
    (root / "img/3.png").unlink()  # missing file
    (root / "outside.png").write_bytes(good)  # a real image, but not under root/img
    table.loc[4, "path"] = "../outside.png"  # escapes the image root
    table.loc[5, "path"] = str((root / "outside.png").resolve())  # absolute, outside the root
    Image.new("L", (1, 1)).save(root / "img/6.png")
    bomb = bytearray((root / "img/6.png").read_bytes())
    bomb[16:24] = (20000).to_bytes(4, "big") * 2  # header claims 20000 x 20000 pixels
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # with a valid chunk CRC
    (root / "img/6.png").write_bytes(bytes(bomb))
    table.to_csv(table_path, index=False)
    return table_path


@pytest.mark.parametrize("workers", ["this process", "worker processes"])
def test_every_broken_row_is_reported_in_one_error_with_file_and_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    import datamodules.many_files as many_files
    import datamodules.validation as validation

    if workers == "worker processes":  # as a large folder is checked: forked, in chunks
        monkeypatch.setattr(validation, "PARALLEL_AFTER", 1)
        monkeypatch.setattr(many_files, "CHUNK", 4)
    table = corrupt(tmp_path)
    data = ImageCSVDataModule(table, image_root=tmp_path / "img", read_mode="GRAY",
                              num_workers=0)
    with pytest.raises(DataValidationError) as error:
        data.setup("fit")
    message = str(error.value)
    assert message.splitlines()[0].startswith(f"{table}: 6 invalid row(s)")
    expected = {
        1: "cannot decode", 2: "not an image file", 3: "missing image file",
        4: "is outside the image root", 5: "is outside the image root",
        6: "decompression bomb",
    }
    rows = {p.row: p.message for p in error.value.problems}
    for row, text in expected.items():
        assert text in rows[row], (row, rows[row])
        assert f"row {row}: " in message


def test_skip_invalid_drops_the_broken_rows_and_trains_on_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = corrupt(tmp_path)
    data = ImageCSVDataModule(table, image_root=tmp_path / "img", read_mode="GRAY",
                              skip_invalid=True, num_workers=0)
    with caplog.at_level("WARNING"):
        data.setup("fit")
    assert sum(len(d) for d in data.datasets.values()) == 30 - 6
    assert "skip_invalid dropped 6 of 30 rows" in caplog.text


def test_more_than_ten_problems_show_ten_and_the_total(tmp_path: Path) -> None:
    rows = [{"path": f"missing_{i}.png", "label": "x"} for i in range(25)]
    data = ImageCSVDataModule(write_table(tmp_path, rows), num_workers=0)
    with pytest.raises(DataValidationError, match="25 invalid row") as error:
        data.setup("fit")
    lines = str(error.value).splitlines()
    assert sum(line.startswith("  row ") for line in lines) == 10
    assert lines[-1] == "  ... and 15 more"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("", "0 invalid row(s) (the table has no rows)"),
        ("path\nimg/0.png\n", "missing column(s) ['label']; found ['path'] (the *_column options"),
        ("path,label\n,a\nimg/1.png,a\n", "row 0: no path in column 'path'"),
        ("path,label\nimg/0.png,\n", "row 0: no label in column 'label'"),
        ('path,label\nimg/0.png,a\nimg/1.png,"   "\n', "row 1: no label in column 'label'"),
        ("path,label,split\nimg/0.png,a,train\nimg/1.png,b,test\n",
         "test label 'b' is not a training class ['a']"),
        ("path,label,split\nimg/0.png,a,train\nimg/1.png,a,holdout\n",
         "column 'split' has values ['holdout']"),
    ],
    ids=["empty", "no-label-column", "empty-path", "empty-label", "spaces-label",
         "unknown-test-label", "bad-split-value"],
)
def test_bad_tables_are_refused_with_a_message_naming_the_problem(
    tmp_path: Path, table: str, expected: str
) -> None:
    make_images(tmp_path, 2, ["a"])
    (tmp_path / "t.csv").write_text(table)
    split = "split" if "split" in table else None
    data = ImageCSVDataModule(tmp_path / "t.csv", split_column=split, num_workers=0)
    with pytest.raises(ValueError) as error:
        data.setup("fit")
    assert str(tmp_path / "t.csv") in str(error.value)
    assert expected in str(error.value)


def test_the_tables_own_problems_are_reported_before_any_file_is_checked(tmp_path: Path) -> None:
    # A label error on a large folder is said at once, not after minutes of checking files.
    make_images(tmp_path, 2, ["a"])
    (tmp_path / "t.csv").write_text("path,label\nimg/0.png,a\nimg/1.png,\nimg/9.png,a\n")
    data = ImageCSVDataModule(tmp_path / "t.csv", num_workers=0)
    with pytest.raises(DataValidationError) as error:
        data.setup("fit")
    assert [p.row for p in error.value.problems] == [1]  # img/9.png is missing: not looked at
    assert "row 1: no label in column 'label'" in str(error.value)


def test_a_folder_given_as_the_table_is_named_as_a_folder(tmp_path: Path) -> None:
    make_images(tmp_path, 2, ["a"])
    data = ImageCSVDataModule(tmp_path / "img", task="none", num_workers=0)
    with pytest.raises(DataError, match=r"img is a folder: give a table \(CSV"):
        data.setup("fit")


def test_a_split_column_left_unset_is_said_not_silently_ignored(tmp_path: Path) -> None:
    make_images(tmp_path, 20, ["a", "b"])
    rows = [{"path": f"img/{i}.png", "label": "ab"[i % 2], "split": "train"} for i in range(20)]
    data = ImageCSVDataModule(write_table(tmp_path, rows), num_workers=0)
    with log_lines() as lines:
        data.setup("fit")
    assert any("column 'split' is not used (split_column: null)" in line for line in lines)


@pytest.mark.slow
def test_string_labels_round_trip_through_a_checkpoint(run_dir: Path) -> None:
    import train
    from models.classifier import ImageClassifier

    table = make_images(run_dir, 24, ["dog", "cat", "bird"])
    train.main([
        f"--config={DIGITS_CONFIG}",  # the digits run's model, on this table
        "--data=datamodules.image_csv.ImageCSVDataModule", f"--data.annotations={table}",
        "--data.read_mode=GRAY", "--data.num_workers=0", "--data.batch_size=8", "--max_epochs=1",
        "--trainer.logger.init_args.save_dir=logs", "--trainer.enable_progress_bar=false",
    ])
    (best,) = (run_dir / "logs").glob("digits/version_0/checkpoints/epoch*.ckpt")
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["bird", "cat", "dog"]
    assert checkpoint["ImageCSVDataModule"]["class_names"] == ["bird", "cat", "dog"]
    model = ImageClassifier.load_from_checkpoint(best)  # no arguments needed
    assert model.hparams.class_names == ["bird", "cat", "dog"]
    assert model(torch.zeros(2, 1, 6, 6)).shape == (2, 3)


def test_images_that_would_not_stack_into_a_batch_are_refused_before_training(
    tmp_path: Path, mixed_formats: Path
) -> None:
    """Mixed channels under UNCHANGED, or a 1x1 file among 6x6 ones with no resize, would
    fail in the collate mid-epoch; refused at setup, naming both files and what to set."""
    data = ImageCSVDataModule(mixed_formats, read_mode="UNCHANGED", split_column="split",
                              train_transforms=torch.nn.Identity(), num_workers=0)
    with pytest.raises(DataError, match=r"gray.png \(5x4 L\) becomes \[1, 4, 5\] but .*rgb.png "
                                        r"\(5x4 RGB\) becomes \[3, 4, 5\]; set read_mode: RGB"):
        data.setup("fit")

    table = make_images(tmp_path / "sizes", 12, ["a", "b"])
    write_png(torch.zeros((1, 1, 1), dtype=torch.uint8), str(tmp_path / "sizes/img/7.png"))
    data = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0)
    with pytest.raises(DataError, match=r"img/7.png \(1x1 L\) becomes \[1, 1, 1\]; give "
                                        "(train|eval)_transforms a v2.Resize"):
        data.setup("fit")
    resize = v2.Compose([v2.Resize((6, 6)), v2.ToDtype(torch.float32, scale=True)])
    data = ImageCSVDataModule(table, read_mode="GRAY", num_workers=0, train_transforms=resize,
                              eval_transforms=resize)
    data.setup("fit")
    assert next(iter(data.train_dataloader()))[0].shape[1:] == (1, 6, 6)


def test_bad_data_stops_train_py_before_training_with_no_run_folder(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import train

    table = corrupt(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        train.main([f"--config={DIGITS_CONFIG}", "--data=datamodules.image_csv.ImageCSVDataModule",
                    f"--data.annotations={table}", "--trainer.logger.init_args.save_dir=logs"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"train.py: error: {table}: " in err
    assert "row 3: missing image file" in err
    assert "Traceback" not in err
    assert not (run_dir / "logs").exists()  # nothing that looks like a run was started


def repeated_table(tmp_path: Path, **changed: object) -> Path:
    """30 images in 3 classes; row 20 lists row 3's image again, with ``changed`` columns."""
    table = make_images(tmp_path, 30, ["a", "b", "c"])
    rows = pd.read_csv(table)
    rows["split"] = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    rows.loc[20] = {**rows.loc[3].to_dict(), "split": rows.loc[20, "split"], **changed}
    rows.to_csv(table, index=False)
    return table


def test_an_image_listed_twice_with_two_labels_is_refused_naming_both_rows(
    tmp_path: Path
) -> None:
    data = ImageCSVDataModule(repeated_table(tmp_path, label="b"), image_root=tmp_path,
                              read_mode="GRAY", num_workers=0)
    with pytest.raises(DataValidationError, match=r"'img/3.png' is listed in rows 3 and 20 "
                                                  "with different targets"):
        data.setup("fit")
    data = ImageCSVDataModule(repeated_table(tmp_path, label="b"), image_root=tmp_path,
                              read_mode="GRAY", num_workers=0, skip_invalid=True)
    data.setup("fit")  # both rows dropped: which label is right is not the template's guess
    assert sum(len(d) for d in data.datasets.values()) == 28


def test_an_image_in_two_splits_is_refused_and_a_plain_repeat_is_kept_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crossing = repeated_table(tmp_path, label="a")  # row 3 (train) again in the test split
    data = ImageCSVDataModule(crossing, image_root=tmp_path, read_mode="GRAY", num_workers=0,
                              split_column="split")
    with pytest.raises(DataValidationError, match=r"row 20: 'img/3.png' is also row 3, in split "
                                                  "'train'"):
        data.setup("fit")

    # Without a split column the copies could land in train and test: kept once, said once.
    data = ImageCSVDataModule(crossing, image_root=tmp_path, read_mode="GRAY", num_workers=0)
    with caplog.at_level("WARNING"):
        data.setup("fit")
    paths = [p for split in ("train", "val", "test") for p in data.split_tables[split]["path"]]
    assert len(paths) == 29 and paths.count("img/3.png") == 1
    assert "1 rows repeat an earlier row's path and target (first: row 20 repeats row 3" in (
        caplog.text)


def test_a_symlink_out_of_the_image_root_is_named_as_a_symlink(tmp_path: Path) -> None:
    table = make_images(tmp_path / "data", 12, ["a", "b"])
    outside = tmp_path / "elsewhere.png"
    write_png(torch.zeros((1, 6, 6), dtype=torch.uint8), str(outside))
    link = tmp_path / "data" / "img" / "5.png"
    link.unlink()
    link.symlink_to(outside)
    data = ImageCSVDataModule(table, image_root=tmp_path / "data", read_mode="GRAY",
                              num_workers=0)
    with pytest.raises(DataValidationError, match=rf"row 5: {link} \(a symlink to {outside}\) "
                                                  "is outside the image root"):
        data.setup("fit")


def test_normalising_only_the_training_images_is_refused_naming_what_to_set(
    tmp_path: Path,
) -> None:
    to_float = v2.ToDtype(torch.float32, scale=True)
    normalised = v2.Compose([to_float, v2.Normalize([0.5], [0.25])])
    table = tmp_path / "labels.csv"
    with pytest.raises(DataError, match=r"the training transforms normalise \(Normalize\(mean="
                                        r"\[0\.5\], std=\[0\.25\]\)\) but the evaluation ones "
                                        r"do not.*add the same Normalize to eval_transforms"):
        ImageCSVDataModule(table, train_transforms=normalised)
    with pytest.raises(DataError, match=r"the evaluation transforms normalise .* add the same "
                                        r"Normalize to train_transforms"):
        ImageCSVDataModule(table, train_transforms=to_float, eval_batch_transforms=normalised)
    with pytest.raises(DataError, match=r"training normalises with .*std=\[0\.25\].* but "
                                        r"evaluation with .*std=\[0\.3\]"):
        ImageCSVDataModule(table, train_transforms=normalised,
                           eval_transforms=v2.Compose([to_float, v2.Normalize([0.5], [0.3])]))
    # Per image for training, per batch for evaluation; an nn.Sequential of transforms.
    ImageCSVDataModule(table, train_transforms=normalised, eval_transforms=to_float,
                       eval_batch_transforms=v2.Normalize([0.5], [0.25]))
    ImageCSVDataModule(table, train_transforms=normalised,
                       eval_transforms=torch.nn.Sequential(to_float, v2.Normalize([0.5], [0.25])))

    class OwnNormalize(torch.nn.Module):  # normalises in its own code: not judged
        def forward(self, x: Tensor) -> Tensor:
            return (x.float() / 255 - 0.5) / 0.25

    ImageCSVDataModule(table, train_transforms=normalised, eval_transforms=OwnNormalize())
