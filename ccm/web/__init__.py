"""Server-rendered pages: the customer portal."""
