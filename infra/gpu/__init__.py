"""Checks that need a GPU machine (see check_phdbscan.sh)."""
