"""`controlplane test`: scenario tests of rule files (alerts over a fake clock, expected executions, plans, pages)."""
