-- Webhooks to callers (Standard Webhooks): the endpoints callers register,
-- one delivery per event and endpoint, and every attempt at it.
CREATE SCHEMA IF NOT EXISTS hooks;

-- An endpoint receives the events of its types ('*': all). The secret signs
-- every delivery; after a roll the previous one signs too until
-- previous_secret_until, so the receiver can switch without a gap.
CREATE TABLE hooks.endpoint (
    id bigserial PRIMARY KEY,
    url text NOT NULL,
    description text NOT NULL DEFAULT '',
    event_types text[] NOT NULL,
    secret text NOT NULL,
    previous_secret text,
    previous_secret_until timestamptz,
    disabled boolean NOT NULL DEFAULT false,
    disabled_reason text,
    -- When its deliveries began to fail without a success since (a run of
    -- failures restarts after a quiet gap): an endpoint failing for
    -- WEBHOOK_DISABLE_AFTER is disabled.
    failing_since timestamptz,
    last_failed_at timestamptz,
    api_key_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One event for one endpoint, made from the outbox by the deliverer (or for
-- the deliverer's own webhook_endpoint.disabled). `payload` is the exact body
-- signed and sent, the same on every attempt. `step` counts the attempts of
-- the current round of the retry schedule (a redelivery starts a new one).
CREATE TABLE hooks.delivery (
    id bigserial PRIMARY KEY,
    endpoint_id bigint NOT NULL REFERENCES hooks.endpoint (id) ON DELETE CASCADE,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    payload text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'succeeded', 'failed')),
    step int NOT NULL DEFAULT 0,
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Held by the deliverer sending it; past it, another may send it again.
    -- Only the holder of `claim_token` records the attempt's outcome.
    lease_until timestamptz,
    claim_token uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX delivery_due_idx ON hooks.delivery (next_attempt_at) WHERE state = 'pending';
CREATE INDEX delivery_endpoint_idx ON hooks.delivery (endpoint_id, id);
CREATE INDEX delivery_endpoint_due_idx ON hooks.delivery (endpoint_id, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX delivery_leased_idx ON hooks.delivery (endpoint_id) WHERE lease_until IS NOT NULL;
CREATE INDEX delivery_created_idx ON hooks.delivery (created_at);

-- The delivery log: every attempt, its answer and how long it took.
CREATE TABLE hooks.attempt (
    id bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES hooks.delivery (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    response_status int,
    latency_ms int NOT NULL,
    error text
);
CREATE INDEX attempt_delivery_idx ON hooks.attempt (delivery_id, id);

-- Which outbox events the deliverer has turned into deliveries. Events
-- written before endpoints existed have none to make.
ALTER TABLE notify.outbox ADD COLUMN hooked_at timestamptz;
UPDATE notify.outbox SET hooked_at = now();
CREATE INDEX outbox_unhooked_idx ON notify.outbox (seq) WHERE hooked_at IS NULL;
