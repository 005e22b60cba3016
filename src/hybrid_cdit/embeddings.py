"""Conditioning embedders and output layer of the CDiT.

Parameter names and shapes follow NWM's ``models.py`` so that NWM state dicts load as they are:
``TimestepEmbedder.mlp.{0,2}``, ``ActionEmbedder.{x_emb,y_emb,angle_emb}``,
``FinalLayer.{linear,adaLN_modulation.1}``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` as one fused op.

    Args:
        x: ``(N, L, D)`` tokens.
        shift, scale: ``(N, D)`` per-sample modulation.

    Returns:
        ``(N, L, D)``.
    """
    return torch.addcmul(shift.unsqueeze(1), x, scale.unsqueeze(1) + 1)


def gated_residual(x: Tensor, gate: Tensor, branch: Tensor) -> Tensor:
    """adaLN-Zero residual ``x + gate * branch``; ``x, branch (N, L, D)``, ``gate (N, D)``."""
    return torch.addcmul(x, gate.unsqueeze(1), branch)


def linear_at(seq: nn.Sequential, index: int) -> nn.Linear:
    """The ``nn.Linear`` at ``seq[index]`` (typed access for initialisation and dtype look-ups)."""
    layer = seq[index]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"expected nn.Linear at index {index}, got {type(layer).__name__}")
    return layer


def zero_linear(layer: nn.Linear) -> None:
    """Set a linear layer's weight and bias to zero (adaLN-Zero initialisation)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t * f_i), sin(t * f_i)]`` of scalars.

    Args:
        t: ``(N,)`` values, possibly fractional.
        dim: output width; an odd width is zero-padded by one column.
        max_period: the lowest frequency is ``1 / max_period``.

    Returns:
        ``(N, dim)`` float32 features.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedder(nn.Module):
    """Scalar (diffusion step, relative time, one action component) -> vector.

    ``(N,)`` -> sinusoidal ``(N, frequency_embedding_size)`` -> MLP -> ``(N, hidden_size)``.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: Tensor) -> Tensor:
        """``t (N,)`` -> ``(N, hidden_size)``."""
        features = sinusoidal_embedding(t, self.frequency_embedding_size)
        out: Tensor = self.mlp(features.to(linear_at(self.mlp, 0).weight.dtype))
        return out


class ActionEmbedder(nn.Module):
    """NWM navigation action ``(dx, dy, dyaw)`` -> vector, one embedder per component.

    ``x_emb`` and ``y_emb`` are ``hidden_size // 3`` wide, ``angle_emb`` takes the rest; the three
    are concatenated to ``(N, hidden_size)``.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        third = hidden_size // 3
        self.x_emb = TimestepEmbedder(third, frequency_embedding_size)
        self.y_emb = TimestepEmbedder(third, frequency_embedding_size)
        self.angle_emb = TimestepEmbedder(hidden_size - 2 * third, frequency_embedding_size)

    def embedders(self) -> tuple[TimestepEmbedder, TimestepEmbedder, TimestepEmbedder]:
        """The per-component embedders ``(x_emb, y_emb, angle_emb)``."""
        return self.x_emb, self.y_emb, self.angle_emb

    def forward(self, y: Tensor) -> Tensor:
        """``y (N, 3)`` -> ``(N, hidden_size)``."""
        return torch.cat([self.x_emb(y[:, 0]), self.y_emb(y[:, 1]), self.angle_emb(y[:, 2])], -1)


class FinalLayer(nn.Module):
    """adaLN-modulated layer norm and linear map from tokens to patch pixels.

    ``(N, L, D)`` tokens and ``(N, D)`` conditioning -> ``(N, L, patch_size**2 * out_channels)``.
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        out: Tensor = self.linear(modulate(self.norm_final(x), shift, scale))
        return out


class RelativePoseEmbedder(nn.Module):
    """Relative pose ``(dx, dy, dz, dpitch, dyaw)`` of a memory frame -> vector.

    Positions get sinusoidal features (``max_period`` 1000 in pose units), angles get harmonics
    ``sin(m a), cos(m a)`` for ``m = 1..angle_harmonics``; an MLP maps them to ``hidden_size``.
    ``(..., 5)`` -> ``(..., hidden_size)``.
    """

    def __init__(
        self, hidden_size: int, position_features: int = 64, angle_harmonics: int = 16
    ) -> None:
        super().__init__()
        self.position_features = position_features
        self.register_buffer(
            "harmonics", torch.arange(1, angle_harmonics + 1, dtype=torch.float32), persistent=False
        )
        width = 3 * position_features + 2 * 2 * angle_harmonics
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def features(self, rel: Tensor) -> Tensor:
        """``(..., 5)`` -> ``(..., width)`` float32 features."""
        lead = rel.shape[:-1]
        flat = rel.reshape(-1, 5).float()
        positions = [
            sinusoidal_embedding(flat[:, i], self.position_features, 1000.0) for i in range(3)
        ]
        harmonics = cast(Tensor, self.harmonics)
        angles = flat[:, 3:, None] * harmonics  # (M, 2, harmonics)
        angular = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)
        return torch.cat([*positions, angular], dim=-1).reshape(*lead, -1)

    def forward(self, rel: Tensor) -> Tensor:
        out: Tensor = self.mlp(self.features(rel).to(linear_at(self.mlp, 0).weight.dtype))
        return out

    def reset_parameters(self) -> None:
        """Small normal weights and zero biases, as NWM initialises its timestep embedders."""
        for index in (0, 2):
            layer = linear_at(self.mlp, index)
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)


class RayEmbedder(nn.Module):
    """Plücker ray ``(d, o x d)`` of a memory token -> vector, zero at initialisation.

    Each of the 6 coordinates gets itself and harmonics ``sin(2^j x), cos(2^j x)`` for
    ``j < frequencies``; an MLP maps them to ``hidden_size``. Its output layer starts at zero
    (:meth:`reset_parameters`), so adding the embedding changes nothing until it is trained.
    ``(..., 6)`` -> ``(..., hidden_size)``.
    """

    def __init__(self, hidden_size: int, frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer(
            "scales", 2.0 ** torch.arange(frequencies, dtype=torch.float32), persistent=False
        )
        width = 6 * (1 + 2 * frequencies)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.reset_parameters()

    def features(self, rays: Tensor) -> Tensor:
        """``(..., 6)`` -> ``(..., 6 * (1 + 2 * frequencies))`` float32 features."""
        rays = rays.float()
        angles = (rays[..., None] * cast(Tensor, self.scales)).flatten(-2)
        return torch.cat([rays, torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, rays: Tensor) -> Tensor:
        out: Tensor = self.mlp(self.features(rays).to(linear_at(self.mlp, 0).weight.dtype))
        return out

    def reset_parameters(self) -> None:
        """Xavier input layer, zero output layer: the embedding starts as exactly zero."""
        first = linear_at(self.mlp, 0)
        nn.init.xavier_uniform_(first.weight)
        nn.init.zeros_(first.bias)
        zero_linear(linear_at(self.mlp, 2))


class MemoryAgeEmbedder(TimestepEmbedder):
    """Age of a memory frame (query step minus the frame's step) -> vector, zero at
    initialisation: :class:`TimestepEmbedder`'s sinusoidal features and MLP with its output
    layer zeroed by :meth:`reset_parameters`. ``(N,)`` -> ``(N, hidden_size)``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__(hidden_size, frequency_embedding_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small normal input layer (NWM's timestep embedders), zero output layer."""
        first = linear_at(self.mlp, 0)
        nn.init.normal_(first.weight, std=0.02)
        nn.init.zeros_(first.bias)
        zero_linear(linear_at(self.mlp, 2))
