"""Knowledge distillation (Hinton et al.): soft targets from frozen teachers (full-precision or ternary, one or an
ensemble), and FitNets-style feature hints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``(1 - alpha) * hard_loss + alpha * T^2 * KL(teacher || student)`` at temperature ``T``.

    The ``T^2`` keeps the soft-target gradients on the same scale as the hard ones whatever the temperature.
    """
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard_loss + alpha * t * t * kl


def feature_hint_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error between matching feature maps (FitNets hints), each standardized per sample first."""

    def norm(f: torch.Tensor) -> torch.Tensor:
        f = f.float().flatten(1)
        return (f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-6)

    losses = [F.mse_loss(norm(s), norm(t)) for s, t in zip(student, teacher)]
    return torch.stack(losses).mean()


class TeacherEnsemble(nn.Module):
    """Several frozen teachers as one: the mean of their logits (the normalized geometric mean of their
    probabilities). Distilling an ensemble gives the student soft targets better than any one teacher's."""

    def __init__(self, teachers: list[nn.Module]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x).float() for t in self.teachers]).mean(0)
