"""Image classification data: ImageNet in ImageFolder layout, the bundled 8x8 digits, synthetic.

Each builder returns an ``ImageData``: the train and validation datasets (items are
``(image tensor C x H x W float32, label int)``) and the shapes a model needs. An image file
that cannot be decoded is an ``UnreadableImage`` naming the file, also from a loader worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2

from graftbench.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0  # fixed, so every run of every sweep tests on the same 360 images


class UnreadableImage(UserError):
    """An image file that cannot be decoded, named relative to the data root: one line.

    A DataLoader worker's exception reaches the main process re-created from a message holding
    the worker's whole traceback (torch's ``ExceptionWrapper``); this keeps only its own line.
    """

    def __init__(self, message: str) -> None:
        _, marker, line = message.rpartition(f"{__name__}.UnreadableImage: ")
        super().__init__(line.strip() if marker else message)


class _ImageLoader:
    """ImageFolder's loader (PIL, RGB) that names the file it cannot decode."""

    def __init__(self, root: Path, split: str) -> None:
        self.root = root
        self.split = split

    def __call__(self, path: str) -> Image.Image:
        try:
            return default_loader(path)
        except Exception as error:
            if isinstance(error, UnidentifiedImageError):
                reason = "not an image format PIL knows"
            else:
                reason = " ".join(str(error).split()) or type(error).__name__
            name = Path(path).relative_to(self.root)
            raise UnreadableImage(
                f"{self.split} split: {name} in the image root {self.root} cannot be decoded "
                f"({reason}); replace or delete that file"
            ) from None


@dataclass(frozen=True)
class ImageData:
    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int


def imagenet_transform(train: bool, crop_size: int = 224, resize_size: int = 256) -> v2.Compose:
    """The standard ImageNet pipeline from a PIL image to a normalized float tensor.

    Train: random-resized crop to ``crop_size`` and horizontal flip. Eval: resize the shorter
    side to ``resize_size``, center crop ``crop_size``.
    """
    if train:
        geometry = [v2.RandomResizedCrop(crop_size), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize_size), v2.CenterCrop(crop_size)]
    return v2.Compose(
        [
            *geometry,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagenet(root: str | Path, crop_size: int = 224, resize_size: int = 256) -> ImageData:
    """ImageNet (or any dataset) laid out as ``root/{train,val}/<class>/<image>``.

    Raises ``UserError`` naming the expected layout when the root, a split folder or the class
    folders are missing, or when train/ and val/ have different classes.
    """
    root = Path(root).expanduser()
    layout = f"expected {root}/{{train,val}}/<class>/<image>.JPEG — see scripts/prepare_imagenet.py"
    if not root.is_dir():
        raise UserError(f"ImageNet root {root} is not a folder; {layout}")
    classes = {split: _class_folders(root, split, layout) for split in ("train", "val")}
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise UserError(
            f"ImageNet root {root}: train/ and val/ have different class folders "
            f"({len(only_train)} only in train/{_examples(only_train)}, "
            f"{len(only_val)} only in val/{_examples(only_val)}); {layout}"
        )
    splits = {}
    for split in ("train", "val"):
        transform = imagenet_transform(split == "train", crop_size, resize_size)
        try:
            splits[split] = datasets.ImageFolder(
                root / split, transform=transform, loader=_ImageLoader(root, split)
            )
        except FileNotFoundError as error:  # a class folder without any image file
            message = " ".join(str(error).split())
            raise UserError(f"ImageNet root {root}, {split}/: {message}; {layout}") from None
    return ImageData(splits["train"], splits["val"], len(classes["train"]), in_channels=3)


def _class_folders(root: Path, split: str, layout: str) -> list[str]:
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"ImageNet root {root} has no {split}/ folder; {layout}")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise UserError(f"ImageNet root {root}: {split}/ has no class folders; {layout}")
    return classes


def _examples(names: list[str]) -> str:
    return f", e.g. {', '.join(names[:3])}" if names else ""


def digits() -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, bundled, no download).

    A stratified split into 1,437 train and 360 test images, fixed whatever the run's seed;
    images are 1 x 8 x 8, standardized with the train split's pixel mean and std.
    """
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels.numpy(),
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return ImageData(
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
        num_classes=10,
        in_channels=1,
    )


class SyntheticImages(Dataset):
    """``size`` items cycling through a fixed pool of random N(0, 1) images and random labels.

    Built once from ``seed``; an item is a view into the pool, so loading costs no more than
    batching, which is what a throughput benchmark wants to leave out.
    """

    def __init__(
        self,
        size: int,
        image_size: int,
        num_classes: int,
        channels: int = 3,
        seed: int = 0,
        pool: int = 64,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        pool = min(pool, size)
        self.size = size
        self.images = torch.randn(pool, channels, image_size, image_size, generator=generator)
        self.labels = torch.randint(num_classes, (pool,), generator=generator)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic images")
        slot = index % len(self.labels)
        return self.images[slot], self.labels[slot]

    def __len__(self) -> int:
        return self.size


def synthetic(
    train_size: int = 1_281_167,
    val_size: int = 50_000,
    image_size: int = 224,
    num_classes: int = 1000,
    channels: int = 3,
    seed: int = 0,
) -> ImageData:
    """Random images shaped like ImageNet by default, for benchmarks without the dataset."""
    return ImageData(
        SyntheticImages(train_size, image_size, num_classes, channels, seed),
        SyntheticImages(val_size, image_size, num_classes, channels, seed + 1),
        num_classes,
        channels,
    )
