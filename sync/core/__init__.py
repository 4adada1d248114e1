"""The sync engine: outbox and contract, engine, policy, supervisor, breaker, limits."""
