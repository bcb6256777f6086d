"""The small Fashion-MNIST classifier that `wgsl-diff eval` uses as a feature extractor
(src/models/evaluation/classifier.rs mirrors it; tools/train/train_classifier.py trains it):

    [conv 3x3 -> SiLU -> avgpool 2x2] per entry of CHANNELS -> flatten (NCHW order)
    -> Linear -> SiLU (= the features) -> Linear (= the logits)
"""

import torch.nn as nn
import torch.nn.functional as F

from tools.common.fashion_mnist import IMAGE_SIZE, PADDING_VALUE

ARCH = "FashionClassifier"
CONFIG = dict(
    in_channels=1,
    channels=[32, 64, 64],
    hidden=128,
    classes=10,
    input_size=IMAGE_SIZE,
    padding_value=PADDING_VALUE,
    class_names=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
)


class FashionClassifier(nn.Module):
    def __init__(self, in_channels, channels, hidden, classes, input_size, **_):
        super().__init__()
        widths = [in_channels] + list(channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(widths, widths[1:]))
        side = input_size >> len(channels)
        self.hidden = nn.Linear(widths[-1] * side * side, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        """Returns (features, logits)."""
        for conv in self.convs:
            x = F.avg_pool2d(F.silu(conv(x)), 2)
        features = F.silu(self.hidden(x.flatten(1)))
        return features, self.head(features)
