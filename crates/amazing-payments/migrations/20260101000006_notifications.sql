-- Notifications: the transactional outbox, the built-in queue, and the
-- record of e-mails sent.
CREATE SCHEMA IF NOT EXISTS notify;

-- Written in the same transaction as the state change it tells of, so an
-- event exists exactly when its change was committed. `seq` is the order of
-- publication.
CREATE TABLE notify.outbox (
    seq bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    type text NOT NULL,
    schema_version int NOT NULL,
    payment_id bigint,
    customer_id bigint NOT NULL,
    body jsonb NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished_idx ON notify.outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_idx ON notify.outbox (published_at) WHERE published_at IS NOT NULL;

-- Which relay publishes now. One at a time keeps the order; another takes
-- over when the holder's lease runs out.
CREATE TABLE notify.relay_lease (
    name text PRIMARY KEY,
    holder uuid NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The built-in queue: a message per event, until it is handled (deleted) or
-- dead (kept with its last error for `amazing-payments dlq`).
CREATE TABLE notify.message (
    event_id uuid PRIMARY KEY,
    seq bigint NOT NULL,
    type text NOT NULL,
    body jsonb NOT NULL,
    state text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'dead')),
    receives int NOT NULL DEFAULT 0,
    visible_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    dead_at timestamptz
);
CREATE INDEX message_ready_idx ON notify.message (visible_at, seq) WHERE state = 'ready';

-- One row per event the notifier has handled or is handling: an event
-- already mailed is never mailed again, whichever copy of it arrives.
CREATE TABLE notify.mail (
    event_id uuid PRIMARY KEY,
    type text NOT NULL,
    state text NOT NULL CHECK (state IN ('sending', 'sent', 'failed', 'skipped')),
    attempts int NOT NULL DEFAULT 0,
    lease_until timestamptz,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz
);
