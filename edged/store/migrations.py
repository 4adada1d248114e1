"""Numbered schema migrations, run at start and recorded in the file itself."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime

log = logging.getLogger(__name__)

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "initial schema", """
CREATE TABLE payments (
    n            INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    method       TEXT NOT NULL CHECK (method IN ('cash', 'card_present', 'token')),
    state        TEXT NOT NULL CHECK (state IN ('pending', 'in_progress', 'approved',
                     'declined', 'canceled', 'failed', 'unknown', 'stored',
                     'forward_declined')),
    amount       INTEGER NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL,
    terminal_id  TEXT,
    reference    TEXT,
    processor    TEXT,
    token        TEXT,
    brand        TEXT,
    last4        TEXT CHECK (last4 IS NULL OR length(last4) <= 4),
    auth_code    TEXT,
    processor_ref TEXT,
    raw_status   TEXT,
    receipt      TEXT,
    failure      TEXT,
    order_id     TEXT REFERENCES orders(id),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    finished_at  TEXT
);
CREATE INDEX payments_state ON payments(state, n);
CREATE INDEX payments_order ON payments(order_id);

CREATE TABLE refunds (
    n            INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    payment_id   TEXT NOT NULL REFERENCES payments(id),
    amount       INTEGER NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL,
    reason       TEXT,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'queued', 'succeeded', 'failed',
                     'unknown')),
    terminal_id  TEXT,
    processor_ref TEXT,
    failure      TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX refunds_payment ON refunds(payment_id);

CREATE TABLE orders (
    n            INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    reference    TEXT NOT NULL UNIQUE,
    currency     TEXT NOT NULL,
    total        INTEGER NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE items (
    id                INTEGER PRIMARY KEY,
    sku               TEXT UNIQUE,
    barcode           TEXT,
    title             TEXT NOT NULL DEFAULT '',
    price             INTEGER,
    variant_id        TEXT UNIQUE,
    inventory_item_id TEXT UNIQUE,
    updated_at        TEXT NOT NULL
);
CREATE INDEX items_barcode ON items(barcode);

CREATE TABLE order_lines (
    order_id     TEXT NOT NULL REFERENCES orders(id),
    line_no      INTEGER NOT NULL,
    item_id      INTEGER NOT NULL REFERENCES items(id),
    quantity     INTEGER NOT NULL CHECK (quantity > 0),
    price        INTEGER NOT NULL CHECK (price >= 0),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE inventory_levels (
    item_id            INTEGER PRIMARY KEY REFERENCES items(id),
    reported_quantity  INTEGER NOT NULL,
    reported_at        TEXT NOT NULL
);

CREATE TABLE adjustments (
    n            INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    reason       TEXT NOT NULL,
    reference    TEXT,
    created_at   TEXT NOT NULL
);

-- Local stock = reported_quantity + the deltas Shopify has not acknowledged yet.
CREATE TABLE stock_deltas (
    id            INTEGER PRIMARY KEY,
    item_id       INTEGER NOT NULL REFERENCES items(id),
    delta         INTEGER NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('sale', 'adjustment')),
    source_id     TEXT NOT NULL,
    acknowledged  INTEGER NOT NULL DEFAULT 0,
    acknowledged_at TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX stock_deltas_open ON stock_deltas(item_id) WHERE acknowledged = 0;
CREATE INDEX stock_deltas_acked ON stock_deltas(item_id, acknowledged_at)
    WHERE acknowledged = 1;
CREATE INDEX stock_deltas_source ON stock_deltas(source, source_id);

CREATE TABLE outbox_batches (
    id               INTEGER PRIMARY KEY,
    destination      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    payload          TEXT NOT NULL,
    created_at       TEXT NOT NULL
);

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    destination      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'inflight', 'done', 'dead', 'discarded')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    lease_until      TEXT,
    last_error       TEXT,
    batch_id         INTEGER REFERENCES outbox_batches(id),
    solo             INTEGER NOT NULL DEFAULT 0,
    outcome_unknown  INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX outbox_queue ON outbox(destination, state, id);
CREATE INDEX outbox_batch ON outbox(batch_id);

CREATE TABLE idempotency (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    body_hash    TEXT NOT NULL,
    status       INTEGER NOT NULL,
    response     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    at           TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    data         TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE UNIQUE INDEX audit_chain ON audit(prev_hash);

CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('register', 'manager')),
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

CREATE TABLE secrets (
    name         TEXT PRIMARY KEY,
    ciphertext   BLOB NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE webhook_inbox (
    id           INTEGER PRIMARY KEY,
    source       TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    topic        TEXT NOT NULL,
    body         BLOB NOT NULL,
    received_at  TEXT NOT NULL,
    processed_at TEXT,
    UNIQUE (source, delivery_id)
);
"""),
    (2, "alerts, status-page sessions, watchdog heartbeat", """
CREATE TABLE alerts (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL,
    kind         TEXT NOT NULL,
    severity     TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    subject      TEXT,
    message      TEXT NOT NULL,
    data         TEXT NOT NULL DEFAULT '{}',
    raised_at    TEXT NOT NULL,
    cleared_at   TEXT
);
CREATE UNIQUE INDEX alerts_open ON alerts(key) WHERE cleared_at IS NULL;
CREATE INDEX alerts_raised ON alerts(raised_at);

CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    token_id     INTEGER NOT NULL REFERENCES tokens(id),
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX sessions_token ON sessions(token_id);

CREATE TABLE health (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    beat_at      TEXT NOT NULL,
    beats        INTEGER NOT NULL
);
"""),
    # The payment state machine (edged/payments/states.py): `authorized` joins the CHECK list;
    # the terminal's own figures when they differ from the request; when a payment was
    # accepted offline. SQLite changes a CHECK only by rebuilding the table.
    (3, "payment states from the state machine", """
CREATE TABLE payments_new (
    n            INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    method       TEXT NOT NULL CHECK (method IN ('cash', 'card_present', 'token')),
    state        TEXT NOT NULL CHECK (state IN ('pending', 'in_progress', 'approved',
                     'declined', 'canceled', 'failed', 'unknown', 'authorized', 'stored',
                     'forward_declined')),
    amount       INTEGER NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL,
    terminal_id  TEXT,
    reference    TEXT,
    processor    TEXT,
    token        TEXT,
    brand        TEXT,
    last4        TEXT CHECK (last4 IS NULL OR length(last4) <= 4),
    auth_code    TEXT,
    processor_ref TEXT,
    raw_status   TEXT,
    receipt      TEXT,
    failure      TEXT,
    order_id     TEXT REFERENCES orders(id),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    finished_at  TEXT,
    terminal_figures TEXT,
    stored_at    TEXT
);
INSERT INTO payments_new (n, id, method, state, amount, currency, terminal_id, reference,
    processor, token, brand, last4, auth_code, processor_ref, raw_status, receipt, failure,
    order_id, created_at, updated_at, finished_at, stored_at)
    SELECT n, id, method, state, amount, currency, terminal_id, reference, processor, token,
    brand, last4, auth_code, processor_ref, raw_status, receipt, failure, order_id,
    created_at, updated_at, finished_at,
    CASE WHEN state IN ('stored', 'forward_declined') THEN created_at END FROM payments;
DROP TABLE payments;
ALTER TABLE payments_new RENAME TO payments;
CREATE INDEX payments_state ON payments(state, n);
CREATE INDEX payments_order ON payments(order_id)
"""),
    (4, "manual capture: how a payment is captured, and what was", """
ALTER TABLE payments ADD COLUMN capture TEXT NOT NULL DEFAULT 'automatic'
    CHECK (capture IN ('automatic', 'manual'));
ALTER TABLE payments ADD COLUMN captured INTEGER CHECK (captured IS NULL OR captured > 0)
"""),
    (5, "token scope monitor, last use; pairing codes", """
-- Rebuild tokens for the new CHECK without renaming it, so the references to tokens(id)
-- (sessions) keep naming it. The foreign keys are checked at commit, once every row is back.
PRAGMA defer_foreign_keys = ON;
CREATE TEMP TABLE tokens_v2 AS SELECT id, name, scope, token_hash, created_at, revoked_at
    FROM tokens;
DROP TABLE tokens;
CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('register', 'manager', 'monitor')),
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    last_used_at TEXT
);
INSERT INTO tokens (id, name, scope, token_hash, created_at, revoked_at)
    SELECT id, name, scope, token_hash, created_at, revoked_at FROM temp.tokens_v2;
DROP TABLE temp.tokens_v2;
CREATE INDEX tokens_name ON tokens(name) WHERE revoked_at IS NULL;

CREATE TABLE pairing_codes (
    id           INTEGER PRIMARY KEY,
    salt         TEXT NOT NULL,
    code_hash    TEXT NOT NULL,
    name         TEXT,
    scope        TEXT NOT NULL CHECK (scope IN ('register', 'manager')),
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    used_at      TEXT,
    token_id     INTEGER REFERENCES tokens(id)
);
CREATE INDEX pairing_codes_open ON pairing_codes(expires_at) WHERE used_at IS NULL;
"""),
    (6, "when a send went without answer; when an unknown was last read back", """
ALTER TABLE outbox ADD COLUMN doubt_at TEXT;
ALTER TABLE payments ADD COLUMN last_checked_at TEXT;
ALTER TABLE refunds ADD COLUMN last_checked_at TEXT
"""),
    # Issue 17. A pairing code is bound to the certificate's fingerprint ("" without TLS;
    # NULL: a code made before, which no proof matches). An audit entry says how its hash
    # was made: 1 plain SHA-256 (the entries before), 2 HMAC-SHA256 with the audit key.
    (7, "pairing bound to the certificate; keyed audit chain", """
ALTER TABLE pairing_codes ADD COLUMN fingerprint TEXT;
ALTER TABLE audit ADD COLUMN version INTEGER NOT NULL DEFAULT 1
"""),
    (8, "Shopify talks back: the inbox, applied versions, poll cursors, pick-ups", """
-- One inbox for what Shopify tells the daemon, by webhook or by the catch-up poll. A
-- delivery is unique by its webhook id (delivery_id), and one change under several ids, or
-- seen both ways, shares an event key, and only one row per key is not a duplicate.
ALTER TABLE webhook_inbox ADD COLUMN via TEXT NOT NULL DEFAULT 'webhook'
    CHECK (via IN ('webhook', 'poll', 'daemon'));
ALTER TABLE webhook_inbox ADD COLUMN event_id TEXT;
ALTER TABLE webhook_inbox ADD COLUMN triggered_at TEXT;
ALTER TABLE webhook_inbox ADD COLUMN subject TEXT;
ALTER TABLE webhook_inbox ADD COLUMN version TEXT;
ALTER TABLE webhook_inbox ADD COLUMN event_key TEXT;
ALTER TABLE webhook_inbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'
    CHECK (state IN ('pending', 'done', 'duplicate', 'ignored', 'failed'));
ALTER TABLE webhook_inbox ADD COLUMN outcome TEXT;
ALTER TABLE webhook_inbox ADD COLUMN error TEXT;
ALTER TABLE webhook_inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhook_inbox ADD COLUMN next_attempt_at TEXT;
ALTER TABLE webhook_inbox ADD COLUMN duplicate_of INTEGER;
ALTER TABLE webhook_inbox ADD COLUMN seen_again INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX webhook_inbox_event ON webhook_inbox(source, event_key)
    WHERE event_key IS NOT NULL AND state != 'duplicate';
CREATE INDEX webhook_inbox_due ON webhook_inbox(next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX webhook_inbox_state ON webhook_inbox(state, id);

-- The version of each Shopify subject last applied (a fulfillment order, a product, a
-- level item@location): an older one is ignored, the same one is a duplicate.
CREATE TABLE shopify_versions (
    subject      TEXT PRIMARY KEY,
    version      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    inbox_id     INTEGER,
    applied_at   TEXT NOT NULL
);

-- Where each catch-up poll resumes (Shopify's updated_at), and other small state.
CREATE TABLE shopify_cursors (
    name         TEXT PRIMARY KEY,
    value        TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE shopify_bulk_operations (
    id           TEXT PRIMARY KEY,
    purpose      TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    objects      INTEGER,
    bytes        INTEGER,
    applied_at   TEXT,
    items        INTEGER,
    error        TEXT
);

-- Online orders to pick up at this store: items and customer name, never payment data.
CREATE TABLE pickups (
    n                      INTEGER PRIMARY KEY,
    id                     TEXT NOT NULL UNIQUE,
    fulfillment_order_id   TEXT NOT NULL UNIQUE,
    order_id               TEXT,
    order_name             TEXT,
    customer_name          TEXT,
    location_id            TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('open', 'ready', 'handed_over',
                               'cancelled', 'closed')),
    shopify_status         TEXT NOT NULL,
    shopify_updated_at     TEXT,
    ordered_at             TEXT,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    ready_at               TEXT,
    handed_over_at         TEXT,
    ready_synced_at        TEXT,
    handed_over_synced_at  TEXT
);
CREATE INDEX pickups_status ON pickups(status, n);

CREATE TABLE pickup_lines (
    pickup_id          TEXT NOT NULL REFERENCES pickups(id),
    line_item_id       TEXT NOT NULL,
    sku                TEXT,
    title              TEXT NOT NULL,
    quantity           INTEGER NOT NULL,
    remaining          INTEGER NOT NULL,
    inventory_item_id  TEXT,
    PRIMARY KEY (pickup_id, line_item_id)
);

-- The catalogue follows the admin: a product deleted (or archived) in Shopify leaves its
-- items inactive, kept for their history.
ALTER TABLE items ADD COLUMN active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1));
ALTER TABLE items ADD COLUMN inactive_reason TEXT;
ALTER TABLE items ADD COLUMN product_id TEXT;
CREATE INDEX items_product ON items(product_id)
"""),
    (9, "terminal end-of-day settlements (ZVT)", """
CREATE TABLE terminal_settlements (
    n              INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    terminal_id    TEXT NOT NULL,
    currency       TEXT NOT NULL,
    terminal_total INTEGER NOT NULL,
    terminal_count INTEGER,
    daemon_total   INTEGER NOT NULL,
    daemon_count   INTEGER NOT NULL,
    mismatch       INTEGER NOT NULL CHECK (mismatch IN (0, 1)),
    since          TEXT,
    detail         TEXT,
    created_at     TEXT NOT NULL
);
CREATE INDEX terminal_settlements_terminal ON terminal_settlements(terminal_id, n);
CREATE INDEX terminal_settlements_created ON terminal_settlements(created_at)
"""),
    # A day's queue (issue 21, bench/day.py: 80,000 rows after a 24-hour outage): the claim's
    # look for a stored batch, the batch's members and the oldest waiting row each scanned
    # every pending row. Partial indexes hold only rows still waiting, so they stay small.
    (10, "outbox indexes for a day's queue", """
CREATE INDEX outbox_pending_batched ON outbox(destination, id)
    WHERE state = 'pending' AND batch_id IS NOT NULL;
CREATE INDEX outbox_pending_kind ON outbox(destination, kind, id)
    WHERE state = 'pending' AND batch_id IS NULL;
CREATE INDEX outbox_open_age ON outbox(destination, created_at)
    WHERE state IN ('pending', 'inflight')
"""),
    # bench/years.py: the audit chain was 58 % of what a year keeps per payment. Entries from
    # now on are version 3 (edged/store/audit.py): the MAC as 32 raw bytes, no stored copy of
    # the previous hash, the next seq (the primary key) as the guard against a fork. No
    # query reads audit_chain; it only refused a second entry on one prev_hash, which the
    # primary key does for version 3. Old entries stay as written and still verify.
    (11, "compact audit entries: the chain's unique index on prev_hash dropped", """
DROP INDEX IF EXISTS audit_chain
"""),
)

# Migrations that rebuild a table others reference: run with foreign keys off (SQLite's
# documented procedure), then checked with ``PRAGMA foreign_key_check`` before the commit.
REBUILDS = frozenset({3})


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied now.

    With ``secure_delete=FAST``: SQLite as Debian builds it zeroes every page it frees,
    so dropping an index (migration 11: a year's audit_chain, 118 MB) would write the
    whole index into the WAL in one transaction, past ``wal_max_mb``; FAST still clears
    what it can without more writes. The connection's own setting is put back after.
    """
    prior = conn.execute("PRAGMA secure_delete").fetchone()[0]
    conn.execute("PRAGMA secure_delete=FAST")
    try:
        return _apply(conn)
    finally:
        conn.execute(f"PRAGMA secure_delete={('OFF', 'ON', 'FAST')[prior]}")


def _apply(conn: sqlite3.Connection) -> list[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = []
    for version, name, sql in MIGRATIONS:
        rebuild = version in REBUILDS
        fk_on = bool(conn.execute("PRAGMA foreign_keys").fetchone()[0])
        if rebuild and fk_on:
            conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction
        # check and apply under one write lock: two processes starting on a new file
        # (the daemon and `edged token create`) must not both run a migration
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                            (version,)).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if rebuild and conn.execute("PRAGMA foreign_key_check").fetchone():
                raise sqlite3.IntegrityError(f"migration {version} broke a foreign key")
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, datetime.now(UTC).isoformat()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            if rebuild and fk_on:
                conn.execute("PRAGMA foreign_keys=ON")
        log.info("applied schema migration %d (%s)", version, name)
        applied.append(version)
    return applied
