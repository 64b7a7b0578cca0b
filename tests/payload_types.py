"""A user-defined payload class, importable by every test process."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RobotPose:
    x: float
    y: float
    tags: list[str] = field(default_factory=list)
