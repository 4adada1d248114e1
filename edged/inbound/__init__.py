"""What Shopify tells the store: webhooks and polls into one inbox, pick-ups."""
