"""Payments and refunds: the state table, the services that move them, what a lane takes."""
