"""Helpers shared by several test modules (peers, scenario runners)."""
