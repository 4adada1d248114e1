"""Shopify's GraphQL Admin API: client, cost bucket, stock, orders, reads."""
