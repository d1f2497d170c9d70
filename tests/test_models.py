"""ResNets: sizes from their definitions, zero-init residuals, channels_last, bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import BasicBlock, Bottleneck

from graftbench.errors import UserError
from graftbench.models.resnet import resnet50, resnet_small


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_resnet_params(depth: int, width: int, num_classes: int, in_channels: int) -> int:
    """Parameter count of He et al.'s CIFAR ResNet, from its definition (projection shortcuts)."""

    def conv_bn(c_in: int, c_out: int, k: int) -> int:
        return k * k * c_in * c_out + 2 * c_out

    total = conv_bn(in_channels, width, 3)
    c_in = width
    for c in (width, 2 * width, 4 * width):
        for _ in range((depth - 2) // 6):
            total += conv_bn(c_in, c, 3) + conv_bn(c, c, 3)
            if c_in != c:
                total += conv_bn(c_in, c, 1)
            c_in = c
    return total + 4 * width * num_classes + num_classes


@pytest.fixture(scope="module")
def default_resnet50() -> nn.Module:
    """Built once (initializing 25M parameters is the slow part); tests must not modify it."""
    return resnet50()


def test_resnet50_matches_torchvision_parameter_count(default_resnet50):
    expected = ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]
    assert expected == 25_557_032
    assert n_params(default_resnet50) == expected
    blocks = [m for m in default_resnet50.modules() if isinstance(m, Bottleneck)]
    assert all(torch.all(b.bn3.weight == 1) for b in blocks)


def test_resnet50_options_set_classes_and_zero_init_the_last_bn_of_every_block():
    model = resnet50(num_classes=10, zero_init_residual=True)
    fc_in = 2048
    assert n_params(model) == 25_557_032 - (1000 - 10) * (fc_in + 1)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.all(b.bn3.weight == 0) for b in blocks)


@pytest.mark.parametrize(
    ("depth", "width", "in_channels", "size"), [(8, 16, 1, 8), (20, 16, 3, 32), (8, 4, 3, 32)]
)
def test_small_resnet_size_forward_and_backward(depth, width, in_channels, size):
    torch.manual_seed(0)
    model = resnet_small(depth=depth, width=width, num_classes=7, in_channels=in_channels)
    assert n_params(model) == small_resnet_params(depth, width, 7, in_channels)
    x = torch.randn(4, in_channels, size, size)
    logits = model(x)
    assert logits.shape == (4, 7)
    nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_resnet20_has_the_papers_size():
    # He et al. (2016), table 6: ResNet-20 on CIFAR-10 has 0.27M parameters.
    assert round(n_params(resnet_small(depth=20, num_classes=10)) / 1e6, 2) == 0.27


def test_small_resnet_zero_init_residual_blocks_start_as_their_shortcut():
    torch.manual_seed(0)
    model = resnet_small(depth=14, width=8, in_channels=3, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 6
    x = model.stem(torch.randn(2, 3, 16, 16))
    for block in blocks:
        shortcut = x if block.downsample is None else block.downsample(x)
        torch.testing.assert_close(block(x), torch.relu(shortcut))
        x = block(x)
    default = resnet_small(depth=14, width=8).eval()
    block = next(m for m in default.modules() if isinstance(m, BasicBlock))
    x = torch.randn(2, 8, 16, 16)
    assert not torch.allclose(block(x), torch.relu(x))


@pytest.mark.parametrize("depth", [7, 10, 0])
def test_small_resnet_rejects_depths_that_are_not_6n_plus_2(depth):
    with pytest.raises(UserError, match=r"6n\+2.*got " + str(depth)):
        resnet_small(depth=depth)


@pytest.mark.parametrize(
    ("build", "shape", "train"),
    [
        (lambda: resnet_small(depth=8, in_channels=1), (4, 1, 8, 8), False),
        (lambda: resnet_small(depth=8, in_channels=1), (4, 1, 8, 8), True),
        (lambda: resnet_small(depth=8), (4, 3, 32, 32), True),
        ("resnet50", (2, 3, 64, 64), True),
    ],
)
def test_channels_last_forward_equals_contiguous_forward(build, shape, train, default_resnet50):
    torch.manual_seed(0)
    model = copy.deepcopy(default_resnet50) if build == "resnet50" else build()
    model.train(train)
    x = torch.randn(shape)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    actual = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(0)
    model = resnet_small(depth=8, in_channels=3).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, rtol=0.1, atol=0.1)
    nn.functional.cross_entropy(logits.float(), torch.arange(8)).backward()
    assert all(
        p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters()
    )
