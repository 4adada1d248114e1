"""Stripe through its SDK: gateway, Terminal client, read-back, error sorting."""
