"""Failover: which endpoint of each service is active (manager), and the health checks that move it (checker)."""
