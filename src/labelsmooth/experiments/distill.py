"""``labelsmooth compare --distill``: Müller, Kornblith & Hinton 2019's distillation experiment.

A teacher trained with plain cross-entropy (``ce``) and one trained with uniform label smoothing
(``ls(eps)``, eps = the first ``--smoothing`` value) each teach a student; a third student is trained on
the hard labels alone as the baseline. Müller et al. found that label-smoothed teachers, although
often more accurate, make *worse* teachers: smoothing erases the information about which wrong
classes an example resembles, and that information is what distillation transfers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..functional import cross_entropy
from .report import RunResult, render_markdown, render_text


class DistillationLoss:
    r"""Hinton et al. 2015's distillation loss on fixed, precomputed teacher logits.

    .. math::

        \ell = w\,T^2\,\mathrm{CE}\big(z/T,\ \mathrm{softmax}(t/T)\big) + (1-w)\,\mathrm{CE}(z, y)

    with student logits ``z``, teacher logits ``t`` of the same training row (looked up by
    ``index``), temperature ``T`` and weight ``w`` in ``[0, 1]`` (``w = 1``: soft targets only).
    ``CE`` is :func:`labelsmooth.cross_entropy` (probability targets for the first term). ``T^2`` keeps
    the soft term's gradient scale independent of ``T``; CE differs from ``KL(softmax(t/T) ||
    softmax(z/T))`` by the teacher's entropy, a constant, so the gradients are the KL's.
    """

    needs_index = True

    def __init__(self, teacher_logits: torch.Tensor, temperature: float, weight: float = 1.0
                 ) -> None:
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.soft = torch.softmax(teacher_logits.float() / self.temperature, dim=1)

    def on_train_begin(self, targets: torch.Tensor) -> None:
        self.soft = self.soft.to(targets.device)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, *, index: torch.Tensor
                 ) -> torch.Tensor:
        t = self.temperature
        loss = cross_entropy(logits / t, self.soft[index]) * (t * t)
        if self.weight < 1.0:
            loss = self.weight * loss + (1.0 - self.weight) * cross_entropy(logits, target)
        return loss


def check_temperature(value: float) -> float:
    if math.isnan(value) or not 0.0 < value < math.inf:
        raise ValueError(f"--distill-temperature {value} is not allowed; allowed: a finite float > 0")
    return float(value)


def check_weight(value: float) -> float:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"--distill-weight {value} is out of range; allowed: a float in [0, 1]")
    return float(value)


@dataclass
class Student:
    """All seeds of one student; ``teacher`` is the teaching run's name (None: hard labels)."""

    result: RunResult
    teacher: str | None


def table_rows(students: list[Student], teachers: dict[str, RunResult], pm: str = "±"
               ) -> tuple[list[str], list[list[str]]]:
    header = ["student", "taught by", "teacher acc %", "student acc %", "student NLL",
              "student ECE %"]

    def cell(r: RunResult, key: str, scale: float, fmt: str) -> str:
        text = fmt.format(r.mean(key) * scale)
        if len(r.per_seed) > 1:
            text += f" {pm} " + fmt.format(r.std(key) * scale)
        return text

    rows = []
    for s in students:
        teacher = teachers.get(s.teacher) if s.teacher else None
        rows.append([s.result.name, s.teacher or "hard labels",
                     cell(teacher, "accuracy", 100.0, "{:.1f}") if teacher else "-",
                     cell(s.result, "accuracy", 100.0, "{:.1f}"),
                     cell(s.result, "nll", 1.0, "{:.3f}"),
                     cell(s.result, "ece", 100.0, "{:.1f}")])
    return header, rows


def text_table(students: list[Student], teachers: dict[str, RunResult], pm: str = "±") -> str:
    return render_text(*table_rows(students, teachers, pm))


def markdown_table(students: list[Student], teachers: dict[str, RunResult]) -> str:
    return render_markdown(*table_rows(students, teachers))


def verdict(students: list[Student], teachers: dict[str, RunResult]) -> str:
    """One plain sentence: did the smoothed teacher make a worse teacher than the CE teacher?

    ``students`` is ``[hard-label student, student of the ce teacher, student of the ls teacher]``.
    """
    hard, ce, ls = students
    if ce.teacher is None or ls.teacher is None:
        raise ValueError("verdict needs the students of the ce and the ls teacher")
    ce_name, ls_name = ce.teacher, ls.teacher
    ce_s, ls_s = ce.result, ls.result
    delta = (ls_s.mean("accuracy") - ce_s.mean("accuracy")) * 100
    spread = math.hypot(ls_s.std("accuracy"), ce_s.std("accuracy")) * 100
    n_seeds = len(ce_s.per_seed)
    t_delta = (teachers[ls_name].mean("accuracy") - teachers[ce_name].mean("accuracy")) * 100
    teacher_part = (f"The smoothed teacher {ls_name} was {abs(t_delta):.1f} points "
                    f"{'more' if t_delta >= 0 else 'less'} accurate than the {ce_name} teacher")
    if n_seeds > 1 and abs(delta) <= spread:
        student_part = (f"its student reached {ls_s.mean('accuracy') * 100:.1f}% against "
                        f"{ce_s.mean('accuracy') * 100:.1f}% ({delta:+.1f} points, within the "
                        f"seed-to-seed spread of {spread:.1f}), so on this data the smoothed teacher "
                        f"was not clearly a worse teacher")
    elif abs(delta) < 0.05:
        student_part = (f"its student reached {ls_s.mean('accuracy') * 100:.1f}% against "
                        f"{ce_s.mean('accuracy') * 100:.1f}%, the same, so on this data the smoothed "
                        f"teacher was not a worse teacher")
    elif delta < 0:
        student_part = (f"its student reached {ls_s.mean('accuracy') * 100:.1f}% against "
                        f"{ce_s.mean('accuracy') * 100:.1f}% ({delta:+.1f} points), so on this data "
                        f"the smoothed teacher made a worse teacher, as Müller et al. 2019 report")
    else:
        student_part = (f"its student reached {ls_s.mean('accuracy') * 100:.1f}% against "
                        f"{ce_s.mean('accuracy') * 100:.1f}% ({delta:+.1f} points), so on this data "
                        f"the smoothed teacher did not make a worse teacher")
    out = f"{teacher_part}; {student_part}."
    if n_seeds == 1:
        out += " (One seed: there is no seed-to-seed spread to judge the difference by.)"
    if hard.teacher is None:
        out += (f" The student trained on the hard labels alone reached "
                f"{hard.result.mean('accuracy') * 100:.1f}%.")
    return out


def to_json(students: list[Student], settings: dict[str, Any], sentence: str) -> dict[str, Any]:
    return {"settings": settings, "summary": sentence,
            "students": [{"teacher": s.teacher, **s.result.to_json()} for s in students]}
