"""Test hosts and helpers shared by the test suite."""
