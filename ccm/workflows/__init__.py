"""Workflows: rules that decide per message how it is routed and whether a person must handle it."""
