"""What the memory benchmarks share: a CDiT and a HybridCDiT from the same initial weights,
trained side by side with one DDPM loss, DDIM sampling, PSNR, and plain-text tables.

Used by ``benchmarks/revisit.py`` (synthetic latents) and ``benchmarks/maze/`` (Memory Maze
frames). Public API of ``hybrid_cdit`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from hybrid_cdit import CDiT, HybridCDiT, MemoryContext, memory_guided_forward, routed_forward

__all__ = [
    "Diffusion",
    "build_pair",
    "format_table",
    "load_cdit_weights",
    "optimizer",
    "predict",
    "psnr",
    "set_warmup",
    "ssim",
    "train_step",
    "train_step_each",
]


class Diffusion:
    """Minimal DDPM forward process (cosine ``alpha_bar``, Nichol & Dhariwal) and a
    deterministic DDIM sampler (Song et al., ``eta = 0``).

    The network predicts ``prediction``: ``"eps"`` (the noise, as DiT and NWM do) or ``"v"``
    (``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0``, Salimans & Ho). Both are the same
    DDPM model; they differ in how a network's error at high noise maps onto ``x0``: recovering
    ``x0`` from an epsilon prediction divides its error by ``sqrt(alpha_bar_t)``, which is 5e-5
    at the last step of the cosine schedule, so a briefly trained epsilon network starts DDIM
    from a meaningless ``x0`` estimate; a v prediction stays well conditioned at every level.
    """

    def __init__(self, num_steps: int = 1000, prediction: str = "eps") -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.num_steps = num_steps
        self.prediction = prediction
        s = 0.008
        u = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.alpha_bar = torch.cumprod(1 - betas, 0).float()

    def _alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """``alpha_bar_t`` for ``t (B,)``, shaped to broadcast against ``like (B, ...)``."""
        return self.alpha_bar[t].view(-1, *([1] * (like.dim() - 1)))

    def noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``; ``t (B,)`` long."""
        ab = self._alpha_bar(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the network learns to output for ``x_t = noise(x0, t, eps)``: ``eps`` or ``v``."""
        if self.prediction == "eps":
            return eps
        ab = self._alpha_bar(t, x0)
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    def eps_from(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise estimate implied by a network output ``out`` at ``(x_t, t)``."""
        if self.prediction == "eps":
            return out
        ab = self._alpha_bar(t, x_t)
        return (1 - ab).sqrt() * x_t + ab.sqrt() * out

    def training_sample(self, x0: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Draw timesteps ``t (B,)`` and noise for clean ``x0 (B, ...)`` with ``gen`` (in that
        order); return ``(x_t, t, target)``, the inputs and the target of the DDPM loss."""
        t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        return self.noise(x0, t, eps), t, self.target(x0, eps, t)

    def ddim_timesteps(self, steps: int) -> Tensor:
        """``steps`` timesteps from ``num_steps - 1`` down to 0, evenly spaced (long)."""
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in [1, {self.num_steps}], got {steps}")
        return torch.linspace(self.num_steps - 1, 0, steps).round().long()

    @torch.no_grad()
    def ddim_sample(
        self,
        eps_fn: Callable[[Tensor, Tensor], Tensor],
        x_T: Tensor,
        steps: int,
        *,
        clip: float | None = 1.0,
    ) -> Tensor:
        """Deterministic DDIM from ``x_T (B, ...)``: the final clean estimate ``x0``.

        Args:
            eps_fn: ``(x_t, t (B,) long) -> eps`` prediction.
            x_T: starting noise (draw it with a seeded generator for fixed-seed samples).
            steps: denoising steps.
            clip: clamp each ``x0`` estimate to ``[-clip, clip]`` (None: no clamp).
        """
        times = self.ddim_timesteps(steps)
        x = x_T
        x0 = x_T
        for i, t in enumerate(times.tolist()):
            tt = torch.full((x.shape[0],), t, dtype=torch.long)
            ab = self.alpha_bar[t]
            eps = eps_fn(x, tt)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            if i + 1 < len(times):
                ab_next = self.alpha_bar[int(times[i + 1])]
                x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return x0


def build_pair(
    arch: Mapping[str, Any], memory_kwargs: Mapping[str, Any], seed: int
) -> tuple[CDiT, HybridCDiT]:
    """A CDiT drawn with ``seed`` and a HybridCDiT holding the same CDiT weights.

    The hybrid loads the CDiT's state dict; only memory parameters may be missing (they start
    function-preserving), anything else raises ``RuntimeError``.
    """
    torch.manual_seed(seed)
    cdit = CDiT(**arch)
    torch.manual_seed(seed + 1)
    hybrid = HybridCDiT(**arch, **memory_kwargs)
    load_cdit_weights(hybrid, cdit)
    return cdit, hybrid


def load_cdit_weights(hybrid: HybridCDiT, cdit: CDiT) -> None:
    """Give ``hybrid`` the CDiT weights of ``cdit``; its memory parameters start again from
    their function-preserving initial state (derived from those weights), as when a user loads
    a CDiT checkpoint into a HybridCDiT. Anything but memory parameters missing raises
    ``RuntimeError``."""
    result = hybrid.load_state_dict(cdit.state_dict(), strict=False)
    wrong = [k for k in result.missing_keys if "memory" not in k] + list(result.unexpected_keys)
    if wrong:
        raise RuntimeError(f"CDiT weights did not map onto the hybrid: {wrong}")


def optimizer(model: nn.Module, lr: float, memory_lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay; a HybridCDiT's memory parameters get ``memory_lr``.

    Every group remembers its peak rate as ``base_lr`` for :func:`set_warmup`.
    """
    if isinstance(model, HybridCDiT):
        groups: list[dict[str, Any]] = [
            {"params": list(model.cdit_parameters()), "lr": lr},
            {"params": list(model.memory_parameters()), "lr": memory_lr},
        ]
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def set_warmup(opts: Sequence[torch.optim.Optimizer], step: int, warmup: int) -> None:
    """Linear warm-up: every group's rate is ``base_lr * min(1, step / warmup)``."""
    scale = min(1.0, step / max(1, warmup))
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale


def predict(
    model: CDiT,
    x_t: Tensor,
    t: Tensor,
    y: Tensor,
    x_cond: Tensor,
    rel_t: Tensor,
    memory: MemoryContext | None,
    guidance: float = 1.0,
    fallback: CDiT | None = None,
) -> Tensor:
    """The network's prediction ``(B, C, H, W)`` (epsilon or v, see :class:`Diffusion`): the
    first ``C`` output channels. A plain CDiT never sees ``memory``; a hybrid given ``memory``
    and a ``guidance`` other than 1 goes through :func:`memory_guided_forward`; a hybrid given a
    ``fallback`` CDiT through :func:`routed_forward` (the fallback where memory is inactive)."""
    out: Tensor
    if isinstance(model, HybridCDiT) and fallback is not None:
        if guidance != 1.0:
            raise ValueError(f"a fallback needs guidance 1, got {guidance!r}")
        out = routed_forward(model, fallback, x_t, t, y, x_cond, rel_t, memory)
    elif isinstance(model, HybridCDiT) and memory is not None and guidance != 1.0:
        out = memory_guided_forward(model, x_t, t, y, x_cond, rel_t, memory, guidance)
    elif isinstance(model, HybridCDiT):
        out = model(x_t, t, y, x_cond, rel_t, memory=memory)
    else:
        out = model(x_t, t, y, x_cond, rel_t)
    return out[:, : x_t.shape[1]]


def train_step(
    models: Sequence[tuple[CDiT, torch.optim.Optimizer]],
    x_t: Tensor,
    t: Tensor,
    target: Tensor,
    y: Tensor,
    x_cond: Tensor,
    rel_t: Tensor,
    memory: MemoryContext | None,
    *,
    clip: float,
) -> list[Tensor]:
    """One optimiser step of every model on the same noised batch and inputs (see
    :func:`train_step_each`).

    Returns:
        per model, the detached per-sample losses ``(B,)``.
    """
    return train_step_each(
        [
            (partial(predict, model, x_t, t, y, x_cond, rel_t, memory), model, opt)
            for model, opt in models
        ],
        target,
        clip=clip,
    )


def train_step_each(
    steps: Sequence[tuple[Callable[[], Tensor], nn.Module, torch.optim.Optimizer]],
    target: Tensor,
    *,
    clip: float,
) -> list[Tensor]:
    """One optimiser step of every model on the same noised batch (the DDPM loss: mean squared
    error against ``target``, from :meth:`Diffusion.target`), each model's prediction from its
    own ``forward()`` (so models may see different conditioning of the same samples).

    Args:
        steps: per model, ``(forward, model, optimizer)``; ``forward()`` returns the prediction
            ``(B, ...)`` shaped as ``target``.

    Returns:
        per model, the detached per-sample losses ``(B,)``.
    """
    losses = []
    for forward, model, opt in steps:
        per_sample = (forward() - target).square().flatten(1).mean(1)
        opt.zero_grad(set_to_none=True)
        per_sample.mean().backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(per_sample.detach())
    return losses


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample PSNR in dB of images ``(B, ...)`` with values in ``[0, 1]`` (MSE floored at
    ``1e-10``)."""
    mse = (a - b).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-sample SSIM (Wang et al., 2004) of images ``(B, C, H, W)`` with values in ``[0, 1]``.

    Gaussian-weighted local means, variances and covariance over ``window x window`` patches
    (standard deviation ``sigma``; the window shrinks to the largest odd size that fits the
    image), constants ``(0.01)^2`` and ``(0.03)^2``, "valid" patches only; the SSIM map is
    averaged over positions and channels. Computed in float64, returned in the inputs' dtype.

    Returns:
        ``(B,)`` SSIM, 1 for identical images.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"a and b must be (B, C, H, W) of one shape, got {a.shape} and {b.shape}")
    size = min(window, a.shape[-2], a.shape[-1])
    size -= 1 - size % 2
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    kernel = kernel / kernel.sum()
    dtype, a, b = a.dtype, a.double(), b.double()  # variances are small differences of squares
    channels = a.shape[1]
    weight = kernel.expand(channels, 1, size, size)

    def local(v: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(v, weight, groups=channels)

    mu_a, mu_b = local(a), local(b)
    var_a = local(a * a) - mu_a**2
    var_b = local(b * b) - mu_b**2
    cov = local(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1).to(dtype)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: floats with 4 significant decimals, columns right-aligned after the
    first."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            str(h).ljust(w) if i == 0 else str(h).rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("-" * len(lines[0]))
    for row in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)
