"""The client side: registering workflows, starting runs, handles to them."""
