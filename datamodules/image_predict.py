"""What ``predict`` runs on for :class:`~datamodules.image_csv.ImageCSVDataModule`: the image
files of a folder, or those a table lists; unreadable ones are reported and skipped."""

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from datamodules.bad_rows import first_problems
from datamodules.base import read_table
from datamodules.image_csv import ImageCSVDataModule, ImageCSVDataset
from datamodules.validation import check_image_files, check_samples_stack
from errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json")
# Formats torchvision cannot decode (BMP, TIFF) are listed too, so they are reported as
# unreadable instead of silently left out.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def predict_files(data: ImageCSVDataModule) -> tuple[list[Path], Path]:
    """The files to predict and the root they must stay inside."""
    path = data.predict_path
    if path is None:
        raise DataError("nothing to predict: set data.init_args.predict_path to a folder of "
                        "images or a table of image paths")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return files, path
    if path.suffix.lower() in TABLE_SUFFIXES:
        table = read_table(path)
        if data.path_column not in table.columns:
            raise DataError(f"{path}: missing column {data.path_column!r}; "
                            f"found {list(table.columns)}")
        root = data.image_root if data.hparams.image_root is not None else path.parent
        return [root / str(p) for p in table[data.path_column]], root
    raise DataError(f"predict_path {path} is neither a folder nor a table "
                    f"({', '.join(TABLE_SUFFIXES)})")


def predict_dataset(data: ImageCSVDataModule) -> ImageCSVDataset:
    """The readable files; the others go to ``data.predict_problems`` (the prediction writer
    lists them all) and a warning shows the first few."""
    files, root = predict_files(data)
    if not files:
        raise DataError(f"predict_path {data.predict_path}: no image files "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    readable = files
    if data.validate_images != "off":
        issues = check_image_files(files, root, data.validate_images == "full", data.max_pixels,
                                   data._headers, remember=data.remember_checks)
        data.predict_problems = [(p, msg) for p, msg in zip(files, issues, strict=True) if msg]
        readable = [p for p, msg in zip(files, issues, strict=True) if not msg]
    if data.predict_problems:
        lines = first_problems([message for _, message in data.predict_problems])
        rank_zero_warn("\n".join([
            f"predict_path {data.predict_path}: skipping {len(data.predict_problems)} of "
            f"{len(files)} image(s) that cannot be read:", *lines]))
    if not readable:
        raise DataError(f"predict_path {data.predict_path}: none of the {len(files)} "
                        "image(s) can be read")
    dataset = ImageCSVDataset(readable, None, data.read_mode, data.eval_transforms)
    if data.batch_size > 1:
        check_samples_stack(dataset, readable, data._headers, str(data.predict_path),
                            "eval_transforms")
    return dataset
