-- Money under partial failure.

-- When the reconciler last read a payment or a refund back from Stripe, so
-- that those which stay open for long (a failed attempt whose PaymentIntent
-- the customer may still complete, a pending refund) are looked at now and
-- then, by one reconciler at a time, not at every pass.
ALTER TABLE payment.payment ADD COLUMN reconciled_at timestamptz;
ALTER TABLE payment.refund ADD COLUMN reconciled_at timestamptz;
CREATE INDEX refund_waiting_idx ON payment.refund (coalesce(reconciled_at, updated_at))
    WHERE status IN ('pending', 'requires_action');

-- The fencing token of the request that holds a client idempotency key:
-- only the holder's answer is saved or released, so a request that outlived
-- its lease cannot overwrite the answer of the retry that took over.
ALTER TABLE auth.idempotency_key ADD COLUMN holder uuid;
