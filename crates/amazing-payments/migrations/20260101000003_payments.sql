-- Products, prices, payments, refunds, their history, and the journal of
-- operations sent to Stripe.
CREATE SCHEMA IF NOT EXISTS payment;

CREATE TABLE payment.product (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    description text,
    active boolean NOT NULL DEFAULT true,
    stripe_product_id text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment.price (
    id bigserial PRIMARY KEY,
    product_id bigint NOT NULL REFERENCES payment.product (id),
    unit_amount bigint NOT NULL CHECK (unit_amount > 0),
    currency text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    active boolean NOT NULL DEFAULT true,
    stripe_price_id text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX price_product_idx ON payment.price (product_id, id);

CREATE TABLE payment.payment (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customer.customer (id),
    status text NOT NULL CHECK (status IN ('pending', 'requires_action', 'processing', 'authorized', 'succeeded',
                                           'partially_refunded', 'refunded', 'failed', 'canceled')),
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    amount_capturable bigint NOT NULL DEFAULT 0 CHECK (amount_capturable >= 0),
    amount_captured bigint NOT NULL DEFAULT 0 CHECK (amount_captured >= 0),
    amount_refunded bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    capture_method text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    price_id bigint REFERENCES payment.price (id),
    quantity bigint,
    payment_method text NOT NULL,
    description text,
    metadata jsonb NOT NULL DEFAULT '{}',
    receipt_email text,
    return_url text,
    stripe_payment_intent_id text UNIQUE,
    stripe_charge_id text,
    client_secret text,
    next_action jsonb,
    capture_before timestamptz,
    failure_code text,
    failure_message text,
    decline_code text,
    cancellation_reason text,
    -- Set when Stripe's answer disagreed with what we asked: never a success.
    integrity_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (amount_captured <= amount),
    CHECK (amount_refunded <= amount_captured),
    CHECK (amount_capturable + amount_captured <= amount)
);
CREATE INDEX payment_customer_idx ON payment.payment (customer_id, id DESC);
CREATE INDEX payment_status_idx ON payment.payment (status, id DESC);

CREATE TABLE payment.refund (
    id bigserial PRIMARY KEY,
    payment_id bigint NOT NULL REFERENCES payment.payment (id),
    status text NOT NULL CHECK (status IN ('pending', 'requires_action', 'succeeded', 'failed', 'canceled')),
    amount bigint NOT NULL CHECK (amount > 0),
    reason text,
    stripe_refund_id text UNIQUE,
    failure_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_payment_idx ON payment.refund (payment_id, id);

-- Every change of a payment's state, append-only.
CREATE TABLE payment.history (
    id bigserial PRIMARY KEY,
    payment_id bigint NOT NULL REFERENCES payment.payment (id),
    refund_id bigint REFERENCES payment.refund (id),
    from_status text,
    to_status text NOT NULL,
    amount_capturable bigint NOT NULL,
    amount_captured bigint NOT NULL,
    amount_refunded bigint NOT NULL,
    source text NOT NULL CHECK (source IN ('api', 'webhook', 'reconciler')),
    stripe_request_id text,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_payment_idx ON payment.history (payment_id, id);

CREATE FUNCTION payment.history_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'payment.history is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE ON payment.history
    FOR EACH ROW EXECUTE FUNCTION payment.history_is_append_only();

-- An operation on Stripe, recorded before Stripe is called: its idempotency
-- key is derived from the row, so a retry, or the reconciler after a crash,
-- repeats exactly the same request.
CREATE TABLE payment.operation (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('create_payment', 'capture', 'cancel', 'refund')),
    payment_id bigint NOT NULL REFERENCES payment.payment (id),
    refund_id bigint REFERENCES payment.refund (id),
    amount bigint,
    idempotency_key text NOT NULL UNIQUE,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- One capture or cancel in flight per payment.
CREATE UNIQUE INDEX operation_one_capture_or_cancel ON payment.operation (payment_id)
    WHERE state = 'pending' AND kind IN ('capture', 'cancel');
CREATE INDEX operation_pending_idx ON payment.operation (created_at) WHERE state = 'pending';
