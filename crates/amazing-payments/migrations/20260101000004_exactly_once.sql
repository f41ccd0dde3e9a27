-- Exactly once: client idempotency keys, payments and refunds bound to the
-- key that asked for them, and operations the reconciler can resume.

-- A client's idempotency key, scoped to the API key that sent it (0 when API
-- keys are off). While `running`, `locked_until` is the lease of the
-- instance executing it: a crashed instance's lease runs out and a retry
-- takes over. `retryable` means the first attempt's outcome was unknown:
-- only the same request may use the key again.
CREATE TABLE auth.idempotency_key (
    scope bigint NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    rpc text NOT NULL,
    fingerprint text NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'retryable', 'done')),
    locked_until timestamptz,
    response jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_key_expiry_idx ON auth.idempotency_key (expires_at);

-- What an operation needs to be sent again (e.g. a cancellation reason),
-- when the reconciler may next try it, and the client key that asked for it
-- (a retry with that key resumes this operation instead of starting another).
ALTER TABLE payment.operation
    ADD COLUMN params jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN request_scope bigint,
    ADD COLUMN request_key text;
CREATE UNIQUE INDEX operation_request_key ON payment.operation (request_scope, request_key) WHERE request_key IS NOT NULL;
CREATE INDEX operation_due_idx ON payment.operation (next_attempt_at) WHERE state = 'pending';

-- Customers, products and prices go through the same journal: their
-- operations have no payment, and carry what they need in `params`.
ALTER TABLE payment.operation ALTER COLUMN payment_id DROP NOT NULL;
ALTER TABLE payment.operation DROP CONSTRAINT operation_kind_check;
ALTER TABLE payment.operation ADD CONSTRAINT operation_kind_check CHECK (kind IN (
    'create_payment', 'capture', 'cancel', 'refund',
    'create_customer', 'update_customer', 'create_product', 'create_price', 'deactivate_product', 'deactivate_price'));
ALTER TABLE payment.operation ADD CONSTRAINT operation_payment_kinds CHECK (
    (payment_id IS NOT NULL) = (kind IN ('create_payment', 'capture', 'cancel', 'refund')));
