"""The link to sync/: the engine built from config, outcomes into our records."""
