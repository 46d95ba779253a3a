"""Test doubles for authsec-crewai: what test suites import."""
