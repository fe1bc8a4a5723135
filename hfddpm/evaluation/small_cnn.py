"""The small CNN behind the offline metrics (FD-digits and the spoken-digit metrics): three conv-BN-ReLU layers (the
first two max-pooled), a global average pool and two linear layers; ``features`` is the penultimate layer.

Example:
    >>> import torch
    >>> net = SmallCNN(width=8, num_classes=10, mean=0.5, std=0.5)
    >>> net.features(torch.rand(2, 1, 28, 28)).shape, net(torch.rand(2, 1, 28, 28)).shape
    (torch.Size([2, 32]), torch.Size([2, 10]))
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class SmallCNN(nn.Module):
    """Grey ``[N, 1, H, W]`` inputs in [0, 1], normalised by ``(x - mean) / std``; convolutions of ``width``,
    ``2 * width`` and ``4 * width`` channels; ``num_features = 4 * width``."""

    def __init__(self, width: int, num_classes: int, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std
        self.num_features = 4 * width
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.fc1 = nn.Linear(4 * width, self.num_features)
        self.fc2 = nn.Linear(self.num_features, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x))).mean(dim=(2, 3))  # global average pool
        return F.relu(self.fc1(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(images))

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 500, resize=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features and class probabilities of ``images`` (optionally passed through ``resize``), in
        batches."""
        features, probs = [], []
        for batch in images.split(batch_size):
            h = self.features(resize(batch) if resize is not None else batch)
            features.append(h)
            probs.append(self.fc2(h).softmax(dim=-1))
        return torch.cat(features), torch.cat(probs)


def load_weights(model: SmallCNN, path: str | os.PathLike, what: str, how_to_train: str) -> SmallCNN:
    """``model`` with the weights of the safetensors file at ``path``, in eval mode and frozen; a missing file raises
    ``FileNotFoundError`` naming ``what`` and ``how_to_train``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}; train them with {how_to_train}.")
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` that ``model`` (put in eval mode) assigns to ``labels``."""
    model.eval()
    predicted = torch.cat([model(batch).argmax(dim=-1) for batch in images.split(batch_size)])
    return float((predicted == labels).double().mean())


def fit(
    model: SmallCNN,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    generator: torch.Generator,
    augment=None,
    on_epoch=None,
) -> SmallCNN:
    """Train ``model`` with cross-entropy, AdamW and a one-cycle LR schedule over shuffled batches; ``augment(batch,
    generator)`` transforms each batch, ``on_epoch(epoch, mean_loss)`` is called after every epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = -(-len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch
    )
    for epoch in range(epochs):
        model.train()
        total_loss = torch.zeros(())
        for idx in torch.randperm(len(images), generator=generator).split(batch_size):
            batch = images[idx] if augment is None else augment(images[idx], generator)
            loss = F.cross_entropy(model(batch), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, float(total_loss) / len(images))
    return model.eval()
