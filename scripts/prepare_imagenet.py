"""Turn the official ILSVRC2012 archives into the layout graftbench reads.

    python scripts/prepare_imagenet.py SOURCE DEST [--only train|val]

SOURCE holds the files from https://image-net.org/ under their official names:
ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_val.tar (for val/), ILSVRC2012_img_train.tar
(for train/). DEST becomes the dataset root:

    DEST/train/<wnid>/<image>.JPEG   from the train tarball (a tar of one tar per class)
    DEST/val/<wnid>/<image>.JPEG     the 50,000 validation images, sorted by the devkit's labels
    DEST/meta.bin                    torchvision's {wnid: class names} and validation labels

The work is done by torchvision's own ImageNet parsers, which also check each archive's MD5
(reading the 138 GB train tarball once more). Each split is unpacked into DEST/.<split>.partial
and renamed when complete, so an interrupted run never leaves a train/ or val/ that looks
finished; run again to redo the unfinished split. An existing train/ or val/ is never touched.
Needs free space for the images plus, while the train split unpacks, the per-class tars.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from torchvision.datasets import imagenet as tv_imagenet

from graftbench.errors import UserError

DEVKIT, _ = tv_imagenet.ARCHIVE_META["devkit"]
VAL_TAR, _ = tv_imagenet.ARCHIVE_META["val"]
TRAIN_TAR, _ = tv_imagenet.ARCHIVE_META["train"]
ARCHIVES = {"val": (DEVKIT, VAL_TAR), "train": (TRAIN_TAR,)}


def prepare(source: Path, dest: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Unpack the requested splits of the archives in ``source`` into ``dest``."""
    for split in splits:
        for name in ARCHIVES[split]:
            if not (source / name).is_file():
                raise UserError(
                    f"{source} has no {name} (needed for {split}/); download the ILSVRC2012 "
                    "files from https://image-net.org/ and keep their official names"
                )
        if (dest / split).exists():
            raise UserError(f"{dest / split} already exists; remove it to prepare {split}/ again")
    dest.mkdir(parents=True, exist_ok=True)
    for split in splits:
        partial = dest / f".{split}.partial"
        if partial.exists():  # left by an interrupted run of this script
            shutil.rmtree(partial)
        try:
            if split == "val":
                _prepare_val(source, dest, partial.name)
            else:
                tv_imagenet.parse_train_archive(str(dest), str(source / TRAIN_TAR), partial.name)
        except RuntimeError as error:  # torchvision's MD5 check failed
            raise UserError(f"preparing {split}/ failed: {' '.join(str(error).split())}") from None
        partial.rename(dest / split)
        print(f"{dest / split}: {_count_images(dest / split)} images", flush=True)


def _prepare_val(source: Path, dest: Path, folder: str) -> None:
    tv_imagenet.parse_devkit_archive(str(dest), str(source / DEVKIT))
    wnids = tv_imagenet.load_meta_file(str(dest))[1]
    tv_imagenet.parse_val_archive(str(dest), str(source / VAL_TAR), wnids, folder)
    # torchvision pairs sorted images with labels by zip(), which would drop any surplus silently.
    unlabeled = [path.name for path in (dest / folder).iterdir() if path.is_file()]
    if unlabeled or _count_images(dest / folder) != len(wnids):
        raise UserError(
            f"{VAL_TAR} does not match the devkit: {len(wnids)} labels, "
            f"{_count_images(dest / folder)} images sorted into classes, "
            f"{len(unlabeled)} left without a label"
        )


def _count_images(split_root: Path) -> int:
    return sum(1 for path in split_root.glob("*/*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Unpack the official ILSVRC2012 archives into DEST/{train,val}/<wnid>/."
    )
    parser.add_argument("source", type=Path, help="folder holding the official archives")
    parser.add_argument("dest", type=Path, help="dataset root to create")
    parser.add_argument("--only", choices=("train", "val"), help="prepare one split only")
    args = parser.parse_args(argv)
    try:
        prepare(args.source, args.dest, (args.only,) if args.only else ("train", "val"))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return UserError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
