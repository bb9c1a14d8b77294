"""Fault scripts: each runs a real stack (tests/stack.py), injects one fault during a stream of submissions,
prints its counts and exits non-zero if any acknowledged image lacks exactly one finished analysis."""
