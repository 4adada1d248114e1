"""Everything that crosses the store's internet link. Imports neither edged nor drivers."""
