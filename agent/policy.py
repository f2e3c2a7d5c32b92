"""A features extractor sized for a CPU: a 3-layer strided CNN (camera) plus an MLP (state)."""
from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class SmallCNN(nn.Module):
    """Three strided convolutions: 64x64 -> 16x16 -> 8x8 -> 4x4, about 15k weights.

    The first layer's stride of 4 does most of the downsampling, which keeps a PPO update of a
    64-sample batch at a few milliseconds on one core (NatureCNN costs several times more).
    """

    def __init__(self, channels: int, height: int, width: int, out_dim: int,
                 filters: tuple[int, int, int] = (16, 32, 32)) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.conv = nn.Sequential(
            nn.Conv2d(channels, f1, kernel_size=8, stride=4, padding=2), nn.ReLU(),
            nn.Conv2d(f1, f2, kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(f2, f3, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.conv(torch.zeros(1, channels, height, width)).shape[1]
        self.head = nn.Sequential(nn.Linear(n_flat, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class DrivingExtractor(BaseFeaturesExtractor):
    """Concatenates SmallCNN(camera) and MLP(vehicle_state) features (any other Box: flattened).

    SB3 has already transposed images to channel-first and scaled them to [0, 1] when this runs.

    Args:
        observation_space: the env's Dict space (after SB3's VecTransposeImage).
        cnn_dim: features from each image.
        state_dim: features from each vector (0 passes the vector through unchanged).
    """

    def __init__(self, observation_space: gym.spaces.Dict, cnn_dim: int = 128,
                 state_dim: int = 64) -> None:
        extractors: dict[str, nn.Module] = {}
        total = 0
        for key, space in observation_space.spaces.items():
            if is_image_space(space, check_channels=False, normalized_image=False):
                c, h, w = space.shape
                extractors[key] = SmallCNN(c, h, w, cnn_dim)
                total += cnn_dim
            else:
                n = int(torch.tensor(space.shape).prod())
                if state_dim > 0:
                    extractors[key] = nn.Sequential(nn.Flatten(), nn.Linear(n, state_dim), nn.Tanh())
                    total += state_dim
                else:
                    extractors[key] = nn.Flatten()
                    total += n
        super().__init__(observation_space, features_dim=total)
        self.extractors = nn.ModuleDict(extractors)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([net(observations[key]) for key, net in self.extractors.items()], dim=1)
