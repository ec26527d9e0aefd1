"""Owns what a replay reports: per rule, what would run and what the guards suppressed, against history."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

DIFFERENCES_SHOWN = 100


def decision(status: str | None, guard: str | None, dry_run: bool) -> str:
    """An execution's guard decision as the report and the self-check compare it."""
    if status is None:
        return "no execution"
    if status == "suppressed":
        return f"suppressed by {guard}"
    return "dry run" if dry_run else "run"


class RuleReport(BaseModel):
    rule: str
    would_run: int = 0
    suppressed: dict[str, int] = Field(default_factory=dict, description="by guard")
    ran: int = Field(0, description="what actually ran in the service's history")
    ran_suppressed: dict[str, int] = Field(default_factory=dict, description="actually suppressed, by guard")
    differences: int = 0


class Difference(BaseModel):
    rule: str
    alert_id: int
    guard_key: str
    actual: str
    replayed: str


class ReplayReport(BaseModel):
    start: datetime
    end: datetime
    rules: str = Field(description="the rules directory replayed")
    alerts: int = Field(description="alerts replayed")
    alerts_in_range: int
    partial: bool = Field(description="stopped before the end of the range (Ctrl-C): counts cover `alerts` only")
    seconds: float
    per_rule: list[RuleReport]
    differences: int = Field(description="(rule, alert) whose decision differs from history")
    first_differences: list[Difference] = Field(description=f"the first {DIFFERENCES_SHOWN}")

    @property
    def reproduces(self) -> bool:
        """The self-check: with the rules in force, the replay made every execution history holds, no other,
        each with the same guard key and the same guard decision."""
        return self.differences == 0

    def lines(self) -> list[str]:
        """The report for a terminal."""
        rate = self.alerts / self.seconds if self.seconds else 0.0
        head = (
            f"replay of {self.start.isoformat()} .. {self.end.isoformat()} through {self.rules}: "
            f"{self.alerts:,} of {self.alerts_in_range:,} alerts in {self.seconds:.1f}s ({rate:,.0f} alerts/s)"
        )
        out = [("PARTIAL (stopped): " if self.partial else "") + head]
        for r in self.per_rule:
            out.append(
                f"  {r.rule}: would run {r.would_run}, suppressed {_by_guard(r.suppressed)}; "
                f"history ran {r.ran}, suppressed {_by_guard(r.ran_suppressed)}; {r.differences} differ"
            )
        if not self.per_rule:
            out.append("  no alert matched a rule")
        for d in self.first_differences:
            out.append(
                f"  differs: {d.rule} alert #{d.alert_id} {d.guard_key}: history {d.actual}, replay {d.replayed}"
            )
        if self.differences > len(self.first_differences):
            out.append(f"  ... and {self.differences - len(self.first_differences)} more differences")
        out.append(
            "same decisions as history, execution for execution"
            if self.reproduces
            else f"{self.differences} decisions differ from history"
        )
        return out


def _by_guard(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} ({', '.join(f'{guard} {n}' for guard, n in sorted(counts.items()))})"


class Tally:
    """Counts as the replay goes."""

    def __init__(self) -> None:
        self.rules: dict[str, RuleReport] = {}
        self.differences = 0
        self.shown: list[Difference] = []

    def rule(self, name: str) -> RuleReport:
        return self.rules.setdefault(name, RuleReport(rule=name, ran=0))

    def add(self, rule: str, alert_id: int, keys: tuple[str, str], actual: str, replayed: str) -> None:
        """One (rule, alert): its decision in history and in the replay, and the guard key of each ("" if none)."""
        report = self.rule(rule)
        for text, runs, suppressed in (
            (replayed, "would_run", report.suppressed),
            (actual, "ran", report.ran_suppressed),
        ):
            if text.startswith("suppressed by "):
                guard = text.removeprefix("suppressed by ")
                suppressed[guard] = suppressed.get(guard, 0) + 1
            elif text != "no execution":
                setattr(report, runs, getattr(report, runs) + 1)
        if actual != replayed or (keys[0] != keys[1] and "" not in keys):
            report.differences += 1
            self.differences += 1
            if len(self.shown) < DIFFERENCES_SHOWN:
                guard_key = keys[0] if keys[0] == keys[1] else " -> ".join(k for k in keys if k)
                shown = Difference(rule=rule, alert_id=alert_id, guard_key=guard_key, actual=actual, replayed=replayed)
                self.shown.append(shown)

    def per_rule(self) -> list[RuleReport]:
        return [self.rules[name] for name in sorted(self.rules)]
