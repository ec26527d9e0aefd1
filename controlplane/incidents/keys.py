"""Owns the grouping key of an incident (and of a rule's guards): chosen labels in Alertmanager's notation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

KEY_MAX = 1024  # incidents.key and .open_key, executions.guard_key


def incident_key(labels: Mapping[str, str], group_by: Sequence[str]) -> str:
    """The grouping key in Alertmanager's label-set notation, e.g. {alertname="X",namespace="y"}.

    A key longer than its columns (long label values; non-ASCII ones are escaped, 6-12 characters
    each) keeps a readable prefix and ends in a digest of the whole, so equal labels still make
    equal keys instead of failing the transaction on PostgreSQL.
    """
    key = "{" + ",".join(f"{name}={json.dumps(labels.get(name, ''))}" for name in group_by) + "}"
    if len(key) <= KEY_MAX:
        return key
    suffix = "...sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key[: KEY_MAX - len(suffix)] + suffix
