"""The store LAN: TLS, mDNS discovery, pairing, tokens, sessions, their commands."""
