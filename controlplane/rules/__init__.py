"""Rules: which alert or metric condition runs which playbook, under which guards."""
