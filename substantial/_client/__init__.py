"""The client side: handles to runs."""
