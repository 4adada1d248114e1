"""The lanes: a driver per terminal built from config, one transaction at a time."""
