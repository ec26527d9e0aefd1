"""Failover: which endpoint of each service is active (manager; rules in thresholds), and the checks that move it."""
