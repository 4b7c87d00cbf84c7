"""Communications: one template sent to one customer, and its deliveries (one per channel)."""
