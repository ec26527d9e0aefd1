"""Stand-ins for systems that cannot run here; each speaks its system's real wire protocol."""
