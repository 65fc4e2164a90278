"""Exact, invertible layout transforms and the target registry (see docs/DESIGN.md)."""
