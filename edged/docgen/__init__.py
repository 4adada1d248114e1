"""The generators of docs/errors.md and docs/payment-states.md (make only)."""
