"""The account of one load: every foreign key loaded, ignored with a reason, or unexpected."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoadReport:
    """What a load did with each foreign key (``summary()``: one line for logs and the CLI)."""

    source: str
    format: str
    tasks: tuple[str, ...] = ()
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.ignored.values():
            reasons[r] = reasons.get(r, 0) + 1
        parts = [f"{self.source} ({self.format}, tasks {'+'.join(self.tasks)}): {self.loaded} tensors loaded"]
        parts += [f"ignored {n}: {r}" for r, n in sorted(reasons.items())]
        if self.resampled:
            parts.append(f"resampled: {', '.join(self.resampled)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (not loaded): {', '.join(self.unexpected[:8])}"
                         + (" ..." if len(self.unexpected) > 8 else ""))
        return "; ".join(parts)
