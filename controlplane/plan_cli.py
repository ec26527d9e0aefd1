"""`controlplane plan RULE`: print what a rule's playbook would do now, step by step, and do none of it.

The rules come from CONTROLPLANE_RULES_DIR (or `--rules DIR`, a candidate set); the targets are
read with the service's settings (cluster, admin APIs, Prometheus, Alertmanager), as the
service would read them. Exit 0 when every step would run, 1 when a step would be refused or
fail (so CI can gate a rule change on it), 2 on a usage or settings error.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from controlplane.config import SettingsError, load_settings
from controlplane.errors import DomainError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser(
        "plan",
        help="show what a rule's playbook would do for an alert or an incident, without doing it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("rule", help="the rule's name")
    subject = plan.add_mutually_exclusive_group(required=True)
    subject.add_argument("--labels", nargs="+", metavar="K=V", help="the alert's labels")
    subject.add_argument("--incident", type=int, metavar="ID", help="plan for this incident (and its newest alert)")
    plan.add_argument("--annotations", nargs="+", default=[], metavar="K=V", help="the alert's annotations")
    plan.add_argument("--rules", type=Path, help="a rules directory (default: CONTROLPLANE_RULES_DIR)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (the API's form)")
    plan.set_defaults(func=cmd_plan)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SettingsError(f"{what} {item!r}: write name=value")
        pairs[name] = value
    return pairs


def cmd_plan(args: argparse.Namespace) -> int:
    from controlplane.actions.builtin import build_registry
    from controlplane.db.engine import make_engine
    from controlplane.playbooks.contexts import ActionContexts, build_ports
    from controlplane.playbooks.plan_request import plan_rule
    from controlplane.rules.loader import RuleLoadError, load_rules

    settings = load_settings()
    registry = build_registry()
    try:
        rules = load_rules(args.rules or settings.rules_dir, registry)
    except RuleLoadError as exc:
        print("\n".join(str(e) for e in exc.errors), file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    contexts = ActionContexts(ports=build_ports(settings, engine), clock=lambda: datetime.now(UTC), rules=lambda: rules)
    try:
        planned, matches = plan_rule(
            registry=registry,
            contexts=contexts,
            rules=rules,
            rule_name=args.rule,
            engine=engine,
            labels=_pairs(args.labels, "label") if args.labels is not None else None,
            annotations=_pairs(args.annotations, "annotation"),
            incident_id=args.incident,
        )
    except DomainError as exc:
        raise SettingsError(exc.message) from None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**planned.as_dict(), "matches": matches}, indent=2, default=str))
    else:
        print(f"rule {planned.rule}, playbook {planned.playbook}:")
        if matches is False:
            print("  (the rule in force would not act on these labels: it does not match them or is disabled)")
        for step in planned.steps:
            print(f"  {step.sentence}")
        if planned.stopped:
            print(f"  stopped: {planned.stopped}")
    failed = planned.stopped is not None or any(s.status in ("refused", "error") for s in planned.steps)
    return 1 if failed else 0
