"""The ``kernel-orchestrator`` command line."""
