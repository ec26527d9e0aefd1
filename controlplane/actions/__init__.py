"""Actions: what playbook steps can do, each registered by name with a typed parameter model."""
