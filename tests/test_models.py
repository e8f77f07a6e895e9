from __future__ import annotations

import pytest
import torch

from imgclf.training.models import build_model


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "shape"), [("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)),
                                             ("convnet", (1, 28, 28)), ("mlp", (3, 32, 32)),
                                             ("cifar_cnn", (3, 32, 32))])
def test_models_map_images_to_class_scores(name, shape):
    model = build_model(name, shape, 10, 8, [0.5] * shape[0], [0.25] * shape[0])
    out = model(torch.rand(5, *shape))
    assert out.shape == (5, 10)


def test_mlp_at_width_32_is_784_128_64_10():
    model = build_model("mlp", (1, 28, 28), 10, 32, [0.0], [1.0])
    assert count(model) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_cifar_cnn_has_ten_outputs_and_right_flatten_size():
    model = build_model("cifar_cnn", (3, 32, 32), 10, 32, [0.5] * 3, [0.25] * 3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 128 * 4 * 4
    assert linears[-1].out_features == 10


def test_normalisation_uses_the_given_statistics():
    model = build_model("mlp", (1, 28, 28), 10, 4, [0.5], [0.25])
    x = torch.full((1, 1, 28, 28), 0.75)
    assert torch.allclose(model[0](x), torch.ones_like(x))


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", (1, 28, 28), 10, 4, [0.0], [1.0])


def test_flip_averaging_applies_at_inference_only():
    model = build_model("cnn", (1, 28, 28), 10, 4, [0.5], [0.25], tta="flip")
    plain = model.net
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), (plain(x) + plain(x.flip(-1))) / 2)
        mirrored = model(x.flip(-1))
    assert torch.allclose(model(x), mirrored, atol=1e-6)  # symmetric by construction
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    assert torch.equal(a, plain(x))


@pytest.mark.parametrize("name", ["cnn", "convnet"])
@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 28, 28), (3, 48, 64), (1, 8, 8),
                                   (3, 32, 32)])
def test_cnns_take_any_size_and_channel_count(name, shape):
    model = build_model(name, shape, 5, 4, [0.5] * shape[0], [0.25] * shape[0])
    assert model(torch.rand(2, *shape)).shape == (2, 5)


def test_convnet_is_the_cnn_with_a_second_convolution_at_each_pooled_size():
    cnn = build_model("cnn", (1, 28, 28), 10, 8, [0.5], [0.25])
    convnet = build_model("convnet", (1, 28, 28), 10, 8, [0.5], [0.25])
    extra = 8 * 8 * 9 + 16 * 16 * 9 + 32 * 32 * 9 + 2 * (8 + 16 + 32)  # convs + their BN
    assert count(convnet) - count(cnn) == extra
    convs = [m for m in convnet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 8), (8, 8), (8, 16), (16, 16), (16, 32), (32, 32)]


def test_cnn_head_reads_the_28x28_map_unchanged():
    # the adaptive pooling before the head is the identity on 28x28 images' 3x3 maps
    model = build_model("cnn", (1, 28, 28), 10, 4, [0.5], [0.25]).eval()
    blocks, pool = model[1][:12], model[1][12]
    x = torch.rand(3, 1, 28, 28)
    features = blocks(model[0](x))
    assert features.shape[2:] == (3, 3)
    assert torch.equal(pool(features), features)
