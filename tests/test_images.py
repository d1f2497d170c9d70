"""Image data on real JPEG files: ImageFolder roots, transforms, loaders, digits, synthetic data,
and scripts/prepare_imagenet.py on tiny fake ILSVRC2012 archives."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.transforms.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import imagenet as tv_imagenet
from torchvision.transforms import v2

from graftbench.data.images import (
    SyntheticImages,
    UnreadableImage,
    digits,
    imagenet,
    imagenet_transform,
    synthetic,
)
from graftbench.data.sampling import make_loader
from graftbench.errors import UserError
from tests.image_helpers import CLASSES, COLORS, jpeg_bytes, make_root

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as torchvision uses


@pytest.fixture
def root(tmp_path) -> Path:
    return make_root(tmp_path / "imagenet")


def test_eval_items_equal_torchvision_functional_reference(root):
    data = imagenet(root, crop_size=32, resize_size=36)
    assert (data.num_classes, data.in_channels) == (3, 3)
    assert len(data.train) == 12 and len(data.val) == 6
    for i, (path, _) in enumerate(data.val.samples):
        image, label = data.val[i]
        with Image.open(path) as pil:
            resized = F.center_crop(F.resize(pil.convert("RGB"), 36), 32)
        reference = F.normalize(F.to_tensor(resized), MEAN, STD)
        torch.testing.assert_close(image, reference)
        assert CLASSES[label] == Path(path).parent.name


def test_train_pipeline_is_the_standard_recipe():
    crop, flip, *_, normalize = imagenet_transform(train=True, crop_size=32).transforms
    assert isinstance(crop, v2.RandomResizedCrop) and crop.size == (32, 32)
    assert (crop.scale, crop.ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
    assert normalize.mean == MEAN and normalize.std == STD


def test_train_batches_are_normalized_crops_with_their_labels(tmp_path):
    # Any crop or flip of a solid-color image is that color, so every pixel is known exactly.
    data = imagenet(make_root(tmp_path / "solid", solid=True), crop_size=32, resize_size=36)
    loader = make_loader(data.train, 5, train=True, seed=0)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5]  # 12 images, last partial batch dropped
    for images, labels in batches:
        assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
        for image, label in zip(images, labels, strict=True):
            color = torch.tensor(COLORS[CLASSES[label]]) / 255
            expected = ((color - torch.tensor(MEAN)) / torch.tensor(STD)).view(3, 1, 1)
            torch.testing.assert_close(image, expected.expand_as(image), atol=0.02, rtol=0)


def per_sample(loader, epoch: int, start_batch: int = 0) -> dict[int, torch.Tensor]:
    """{dataset index: augmented image} for one epoch (from start_batch on)."""
    loader.set_epoch(epoch, start_batch)
    order = list(loader.sampler)
    images = torch.cat([x for x, _ in loader])
    return dict(zip(order, images, strict=False))


def test_augmentations_depend_only_on_seed_epoch_and_sample(root):
    train = imagenet(root, crop_size=32, resize_size=36).train
    serial = make_loader(train, 4, train=True, seed=0)
    epoch1 = per_sample(serial, 1)
    epoch0 = per_sample(serial, 0)
    assert epoch0.keys() == epoch1.keys() == set(range(12))
    assert all(not torch.equal(epoch0[i], epoch1[i]) for i in range(12))

    other_seed = per_sample(make_loader(train, 4, train=True, seed=1), 1)
    assert all(not torch.equal(other_seed[i], epoch1[i]) for i in range(12))

    # Two worker processes, resumed after one batch: the same images as the serial run.
    parallel = make_loader(train, 4, train=True, seed=0, workers=2, persistent_workers=True)
    resumed = per_sample(parallel, 1, start_batch=1)
    assert len(resumed) == 8
    assert all(torch.equal(resumed[i], epoch1[i]) for i in resumed)


def test_loading_does_not_disturb_the_training_rng(root):
    loader = make_loader(imagenet(root, 32, 36).train, 4, train=True, seed=0)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    list(loader)
    torch.testing.assert_close(torch.rand(3), expected)


LAYOUT = "{train,val}/<class>/<image>.JPEG — see scripts/prepare_imagenet.py"


def drop_val(root: Path) -> None:
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()


def empty_train(root: Path) -> None:
    for path in (root / "train").glob("*/*"):
        path.unlink()
    for path in (root / "train").iterdir():
        path.rmdir()


def rename_val_class(root: Path) -> None:
    (root / "val" / "n03").rename(root / "val" / "n04")


def empty_class(root: Path) -> None:
    for path in (root / "val" / "n02").iterdir():
        path.unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: os.rename(root, root.with_name("gone")), "is not a folder"),
        (drop_val, "has no val/ folder"),
        (empty_train, "train/ has no class folders"),
        (rename_val_class, r"different class folders \(1 only in train/, e.g. n03, 1 only in val/"),
        (empty_class, "val/: Found no valid file for the classes n02"),
    ],
)
def test_malformed_roots_raise_one_line_naming_the_layout(root, damage, message):
    damage(root)
    with pytest.raises(UserError, match=message) as raised:
        imagenet(root, 32, 36)
    text = str(raised.value)
    assert "\n" not in text and text.endswith(f"expected {root}/{LAYOUT}")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("split", "damage", "reason"),
    [
        ("train", lambda data: data[: len(data) // 2], "image file is truncated"),
        ("val", lambda data: b"garbage" * 20, "not an image format PIL knows"),
    ],
)
def test_an_undecodable_image_is_one_line_naming_the_file_and_split(
    root, workers, split, damage, reason
):
    bad = root / split / "n02" / "n02_1.JPEG"
    bad.write_bytes(damage(bad.read_bytes()))
    data = imagenet(root, 32, 36)
    dataset = data.train if split == "train" else data.val
    loader = make_loader(dataset, 2, train=split == "train", seed=0, workers=workers)
    with pytest.raises(UnreadableImage) as raised:
        list(loader)
    error, raised = raised.value, None
    error.__traceback__ = None  # the workers stop now, not at exit
    message = str(error)
    assert message.startswith(
        f"{split} split: {split}/n02/n02_1.JPEG in the image root {root} cannot be decoded "
        f"({reason}"
    )
    assert message.endswith("; replace or delete that file") and "\n" not in message
    assert isinstance(error, UserError)


def test_digits_split_is_fixed_stratified_and_complete():
    torch.manual_seed(1)
    np.random.seed(1)
    data = digits()
    torch.manual_seed(2)
    np.random.seed(2)
    again = digits()
    assert (data.num_classes, data.in_channels) == (10, 1)
    assert (len(data.train), len(data.val)) == (1437, 360)
    for split, same in ((data.train, again.train), (data.val, again.val)):
        assert split.tensors[0].shape[1:] == (1, 8, 8)
        assert all(torch.equal(a, b) for a, b in zip(split.tensors, same.tensors, strict=True))

    train_x = data.train.tensors[0]
    assert abs(train_x.mean().item()) < 1e-5 and abs(train_x.std().item() - 1) < 1e-5

    reference = load_digits()
    counts = np.bincount(reference.target)
    test_counts = np.bincount(data.val.tensors[1].numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 360 * counts / counts.sum()) < 1)

    # Train and test together are the 1,797 digits: undo the affine standardization by mapping
    # the 17 distinct values back to the pixel levels 0..16, and compare as multisets.
    images = torch.cat([data.train.tensors[0], data.val.tensors[0]]).flatten(1).numpy()
    labels = torch.cat([data.train.tensors[1], data.val.tensors[1]]).numpy()
    levels = np.unique(images)
    assert len(levels) == 17
    pixels = np.searchsorted(levels, images)
    ours = sorted(map(tuple, np.column_stack([pixels, labels])))
    theirs = sorted(map(tuple, np.column_stack([reference.data.astype(int), reference.target])))
    assert ours == theirs


def test_synthetic_images_are_fixed_by_seed():
    data = synthetic(train_size=100, val_size=10, image_size=16, num_classes=5, seed=3)
    assert (len(data.train), len(data.val), data.num_classes, data.in_channels) == (100, 10, 5, 3)
    image, label = data.train[99]
    assert image.shape == (3, 16, 16) and 0 <= int(label) < 5
    same = SyntheticImages(100, 16, 5, seed=3)
    other = SyntheticImages(100, 16, 5, seed=4)
    assert all(torch.equal(data.train[i][0], same[i][0]) for i in range(100))
    assert not torch.equal(data.train[0][0], other[0][0])
    with pytest.raises(IndexError):
        data.train[100]
    images, labels = next(iter(make_loader(data.train, 32, train=True, seed=0)))
    assert images.shape == (32, 3, 16, 16) and labels.shape == (32,)


# scripts/prepare_imagenet.py on fake archives in the official layout.

# (ILSVRC2012_ID, WNID, words, num_children); ID order differs from WNID order on purpose, and
# the non-leaf synset 4 must be ignored.
SYNSETS = [(1, "n00000003", "cat, kitty", 0), (2, "n00000001", "dog", 0),
           (3, "n00000002", "fish", 0), (4, "n00000009", "animal", 3)]  # fmt: skip
VAL_LABELS = [2, 1, 3, 3, 2, 1]
ID_TO_WNID = {id_: wnid for id_, wnid, _, children in SYNSETS if not children}


def tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archives(source: Path, val_images: int = len(VAL_LABELS)) -> dict[str, bytes]:
    """Writes the three official archives into ``source``; returns {relative path: bytes}."""
    source.mkdir()
    rng = np.random.default_rng(0)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]  # fmt: skip
    synsets = np.zeros((len(SYNSETS), 1), dtype=[(f, "O") for f in fields])
    for row, (id_, wnid, words, children) in enumerate(SYNSETS):
        synsets[row, 0] = (id_, wnid, words, f"a {words}", children, np.zeros(0), 0, 2)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    truth = "".join(f"{label}\n" for label in VAL_LABELS).encode()
    with tarfile.open(source / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar_add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", mat.getvalue())
        tar_add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)

    expected = {}
    with tarfile.open(source / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(val_images):
            name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            data = jpeg_bytes(rng)
            tar_add(tar, name, data)
            if i < len(VAL_LABELS):
                expected[f"val/{ID_TO_WNID[VAL_LABELS[i]]}/{name}"] = data
    with tarfile.open(source / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in sorted(ID_TO_WNID.values()):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(2):
                    data = jpeg_bytes(rng)
                    tar_add(tar, f"{wnid}_{i}.JPEG", data)
                    expected[f"train/{wnid}/{wnid}_{i}.JPEG"] = data
            tar_add(outer, f"{wnid}.tar", inner.getvalue())
    return expected


@pytest.fixture(scope="module")
def prepare_script():
    spec = importlib.util.spec_from_file_location(
        "prepare_imagenet", REPO / "scripts" / "prepare_imagenet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use_checksums_of(source: Path, monkeypatch) -> None:
    """Replace torchvision's MD5s of the official archives with those of the fakes."""
    for key, (name, _) in list(tv_imagenet.ARCHIVE_META.items()):
        md5 = hashlib.md5((source / name).read_bytes()).hexdigest()
        monkeypatch.setitem(tv_imagenet.ARCHIVE_META, key, (name, md5))


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_prepare_imagenet_unpacks_official_archives(tmp_path, prepare_script, capsys, monkeypatch):
    expected = write_archives(tmp_path / "src")
    use_checksums_of(tmp_path / "src", monkeypatch)
    dest = tmp_path / "imagenet"
    assert prepare_script.main([str(tmp_path / "src"), str(dest)]) == 0
    produced = files_under(dest)
    assert produced.pop("meta.bin")
    assert produced == expected  # same files, same bytes, nothing left over

    data = imagenet(dest, crop_size=32, resize_size=36)
    assert data.train.classes == data.val.classes == sorted(ID_TO_WNID.values())
    assert data.val[0][0].shape == (3, 32, 32)

    assert prepare_script.main([str(tmp_path / "src"), str(dest), "--only", "val"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {dest / 'val'} already exists; remove it to prepare val/ again\n"
    )
    assert files_under(dest).keys() == expected.keys() | {"meta.bin"}


def test_prepare_imagenet_rejects_corrupt_and_mismatched_archives(
    tmp_path, prepare_script, capsys, monkeypatch
):
    write_archives(tmp_path / "src", val_images=len(VAL_LABELS) + 1)
    use_checksums_of(tmp_path / "src", monkeypatch)
    assert prepare_script.main([str(tmp_path / "src"), str(tmp_path / "a"), "--only", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "does not match the devkit: 6 labels, 6 images sorted into classes, 1 left" in err
    assert not (tmp_path / "a" / "val").exists()

    with (tmp_path / "src" / "ILSVRC2012_img_val.tar").open("ab") as tar:
        tar.write(b"\0" * 512)  # the file no longer has the checksum torchvision expects
    assert prepare_script.main([str(tmp_path / "src"), str(tmp_path / "b"), "--only", "val"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preparing val/ failed: The archive") and err.count("\n") == 1
    assert not (tmp_path / "b" / "val").exists()


def test_prepare_imagenet_names_a_missing_archive(tmp_path, prepare_script, capsys):
    (tmp_path / "src").mkdir()
    assert prepare_script.main([str(tmp_path / "src"), str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'src'} has no ILSVRC2012_img_train.tar (needed for train/); download "
        "the ILSVRC2012 files from https://image-net.org/ and keep their official names\n"
    )
    assert not (tmp_path / "d").exists()
