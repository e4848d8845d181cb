"""Shared pytest configuration of megara-crdetect."""

# numina's fixtures (drpmocker, run_config...) are not registered automatically
pytest_plugins = ["numina.testing.plugins"]
