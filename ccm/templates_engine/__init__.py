"""Versioned templates: lifecycle, sandboxed rendering, preview and diff."""
