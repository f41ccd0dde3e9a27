-- Disputes: a payment's chargebacks and inquiries, as Stripe reports them
-- (read back from Stripe at each of its dispute events, and from the answers
-- of our own calls). The evidence itself stays with Stripe: it holds the
-- customer's personal data, which the service does not need to keep.
CREATE TABLE payment.dispute (
    id bigserial PRIMARY KEY,
    payment_id bigint NOT NULL REFERENCES payment.payment (id),
    stripe_dispute_id text NOT NULL UNIQUE,
    -- Stripe's: warning_needs_response, warning_under_review,
    -- warning_closed, needs_response, under_review, won or lost.
    status text NOT NULL,
    reason text,
    amount bigint NOT NULL,
    currency text NOT NULL,
    evidence_due_by timestamptz,
    is_charge_refundable boolean NOT NULL,
    submission_count int NOT NULL DEFAULT 0,
    -- What the dispute's balance transactions took from the balance, and
    -- gave back (both positive, in the currency's minor unit, fees apart).
    amount_withdrawn bigint NOT NULL DEFAULT 0,
    amount_reinstated bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dispute_payment_idx ON payment.dispute (payment_id, id);

-- What disputes hold of the payment now: withdrawn less reinstated.
ALTER TABLE payment.payment ADD COLUMN amount_disputed bigint NOT NULL DEFAULT 0;
