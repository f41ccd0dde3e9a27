-- Stripe webhooks: every verified event, stored once (by Stripe's id)
-- before it is worked on; a worker applies it, retries with backoff, and
-- parks it with its reason when it keeps failing.
CREATE SCHEMA IF NOT EXISTS webhook;

CREATE TABLE webhook.event (
    id text PRIMARY KEY,
    type text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'processed', 'parked')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
CREATE INDEX event_due_idx ON webhook.event (next_attempt_at) WHERE state = 'pending';

-- A dispute opened on a payment's charge (Stripe's dispute status).
ALTER TABLE payment.payment ADD COLUMN dispute_status text;
