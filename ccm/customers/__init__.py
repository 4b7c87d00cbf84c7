"""Customer profiles, addresses, preferences and consents."""
