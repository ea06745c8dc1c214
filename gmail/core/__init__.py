"""Plumbing every stage shares: params files into dataclasses, seeding and devices, the stage
entry point (one-line errors), the error type and atomic file writes."""
