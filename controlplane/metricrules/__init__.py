"""Metric rules: PromQL conditions evaluated on a schedule that open incidents just as alerts do."""
