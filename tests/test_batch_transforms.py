"""Batch augmentations draw their randomness per image, and show_batch writes a readable grid."""

from pathlib import Path

import torch
from PIL import Image

from datamodules.batch_transforms import RandomHorizontalFlipBatch, RandomShiftBatch
from datamodules.show_batch import show_batch


def test_random_shift_moves_each_image_by_its_own_offset_within_the_limit() -> None:
    torch.manual_seed(0)
    images = torch.zeros(64, 1, 9, 9)
    images[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    shifted = RandomShiftBatch(max_shift=2)(images)

    assert shifted.shape == images.shape
    positions = {tuple((img[0] == 1).nonzero()[0].tolist()) for img in shifted}
    assert len(positions) > 10  # images moved differently
    assert all(abs(y - 4) <= 2 and abs(x - 4) <= 2 for y, x in positions)
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))  # nothing lost


def test_random_flip_mirrors_some_images_and_leaves_the_others() -> None:
    torch.manual_seed(0)
    images = torch.arange(32 * 3 * 4 * 5, dtype=torch.float32).reshape(32, 3, 4, 5)
    flipped = RandomHorizontalFlipBatch(p=0.5)(images)
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images, strict=True)]
    unchanged = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 5 < sum(mirrored) < 27


def test_show_batch_writes_an_hwc_grid_with_the_images_in_place(tmp_path: Path) -> None:
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    images[1] = 255  # the second tile is white
    path = show_batch(images, torch.tensor([0, 1, 2, 1]), ["zero", "one", "two"],
                      tmp_path / "grid.png", nrow=2, min_size=32)

    picture = Image.open(path)
    assert picture.mode == "RGB"
    tile = 32 + 12 + 2  # enlarged image, label strip, padding
    assert picture.size == (2 + 2 * (32 + 2), 2 + 2 * tile)
    pixels = torch.from_numpy(__import__("numpy").array(picture))
    first, second = pixels[2:34, 2:34], pixels[2:34, 36:68]
    assert int(first.max()) == 0 and int(second.min()) == 255  # not transposed or mixed
    label_strip = pixels[34:46, 2:34]
    assert int(label_strip.min()) < 128  # the label text was drawn


def test_to_float_normalize_equals_todtype_then_normalize_on_batches_and_single_images() -> None:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from datamodules.batch_transforms import ToFloatNormalize

    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    fused = ToFloatNormalize(mean, std)
    batch = torch.randint(0, 256, (8, 3, 5, 7), dtype=torch.uint8)

    for images in (batch, batch[0], tv_tensors.Image(batch[1])):
        out = fused(images)
        assert out.dtype == torch.float32 and out.shape == images.shape
        assert type(out) is type(images)  # a TVTensor stays one, for later v2 steps
        torch.testing.assert_close(out, reference(images), rtol=0, atol=1e-6)
    # Float input is taken as already scaled to [0, 1]: plain Normalize.
    scaled = batch.float() / 255
    torch.testing.assert_close(fused(scaled), v2.Normalize(mean, std)(scaled))
    # TensorBoard pictures undo it (and export metadata records it) like a plain Normalize.
    from callbacks.tensorboard_images import _find_normalize

    assert _find_normalize(v2.Compose([v2.Pad(2), fused])) == (mean, std)
