"""The graph configs of configs/ (issue 14, item 6): ResNet-20, a small Inception model and a
small MobileNetV2 each load, summarise with the parameter counts derived by hand in their
comments, and train one epoch on a few dozen random samples through the Python API, every
trainable array moving (so every branch, shortcut and projection receives a gradient).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import ROOT, cli

import nbcnn

# name: (total, trainable, non-trainable), each derived in the config's comment, and output
# shapes of the merges (one sample, channels-last) from the architecture's arithmetic.
CONFIGS = {
    "resnet20": {
        "counts": (274_042, 272_474, 1_568),
        "shapes": {"s1b3_add": (32, 32, 16), "s2b1_add": (16, 16, 32), "s3b3_out": (8, 8, 64)},
    },
    "inception_mini": {
        "counts": (21_214, 21_214, 0),
        "shapes": {"a_concat": (14, 14, 16 + 24 + 8 + 8), "b_concat": (7, 7, 24 + 32 + 16 + 16)},
    },
    "mobilenetv2_mini": {
        "counts": (27_562, 25_530, 2_032),
        "shapes": {"b3_add": (16, 16, 16), "b5_add": (8, 8, 24)},
    },
}


def config_path(name: str):
    if name == "mobilenetv2_mini":  # DepthwiseConv2D is the plugin's (CI installs it)
        pytest.importorskip("nbcnn_depthwise")
    return ROOT / "configs" / f"{name}.yaml"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_config_summarises_with_its_hand_derived_counts(name):
    result = cli("summary", config_path(name))
    assert result.exit_code == 0, result.stderr
    total, trainable, frozen = CONFIGS[name]["counts"]
    printed = " ".join(result.stdout.split())
    assert f"Total params: {total:,}" in printed
    assert f"Trainable params: {trainable:,}" in printed
    assert f"Non-trainable params: {frozen:,}" in printed
    model = nbcnn.load_model(config_path(name))
    assert model.is_graph
    names = [layer.name for layer in model.layers]
    for layer, shape in CONFIGS[name]["shapes"].items():
        assert model.shapes[names.index(layer)][1] == shape, layer
    # The comment at the top of the config states the same total.
    assert f"total {total:,}" in config_path(name).read_text()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_config_trains_one_epoch_on_random_data(name, capsys):
    model = nbcnn.load_model(config_path(name)).initialize(0)
    rng = np.random.default_rng(0)
    x = rng.random((48, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, 48)
    arrays, owners = model.trainable_weights()
    before = [a.copy() for a in arrays]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    arrays, _ = model.trainable_weights()
    still = [f"{la.name}.{w}" for (la, w), a, b in zip(owners, arrays, before) if (a == b).all()]
    assert not still, f"not trained (no gradient reached them): {still}"
    assert np.isfinite(model.predict(x[:4])).all()


def test_inception_mini_still_fuses_its_stem_conv_and_pool():
    """The stem's convolution feeds only its pooling (the branches read the pooled output),
    so conv + ReLU + max pooling stay one fused step, as the config's comment says; the
    branches' convolutions feed Concatenate or another layer and run alone."""
    model = nbcnn.load_model(config_path("inception_mini")).initialize(0)
    steps = model.steps()
    fused = [[layer.name for layer in step.layers] for _, step in steps if hasattr(step, "layers")]
    assert fused == [["stem_conv", "stem_pool"]]
    assert len(steps) == len(model.layers) - 1


def test_resnet20_has_the_parameter_count_of_he_et_al_with_projection_shortcuts():
    """ResNet-20 (He et al. 2016, section 4.2) counted from its description, option B:
    convolutions without bias, each followed by BatchNormalization (4 numbers a channel, 2
    trainable); a 1x1 stride-2 projection + BatchNormalization where a stage starts."""

    def conv(k, c, f):
        return k * k * c * f

    def bn(c):
        return 4 * c

    def block(c, f):  # two 3x3 convolutions, and a projection where the channels change
        n = conv(3, c, f) + bn(f) + conv(3, f, f) + bn(f)
        return n + (conv(1, c, f) + bn(f) if c != f else 0)

    total = conv(3, 3, 16) + bn(16)
    channels = 16
    for filters in (16, 32, 64):
        for _ in range(3):
            total += block(channels, filters)
            channels = filters
    total += 64 * 10 + 10
    bn_channels = 16 + 3 * 2 * 16 + (3 * 2 + 1) * 32 + (3 * 2 + 1) * 64
    model = nbcnn.load_model(config_path("resnet20"))
    assert model.count_params() == total == 274_042
    assert total - 2 * bn_channels == 272_474
    kinds = [type(layer).__name__ for layer in model.layers]
    # 19 3x3 convolutions + 2 projections, and the Dense: ResNet-"20" counts 19 + 1.
    assert kinds.count("Conv2D") == 21 and kinds.count("Dense") == 1
    assert kinds.count("Add") == 9 and kinds.count("BatchNormalization") == 21
    assert re.search(r"option B", config_path("resnet20").read_text())
