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

-- Keys purged before purging ended their binding: the operations they asked
-- for, settled, are bound to nothing any more (a key past its TTL is a new
-- key). Pending ones keep theirs: their caller may still retry with it.
UPDATE payment.operation o SET request_scope = NULL, request_key = NULL
WHERE o.request_key IS NOT NULL AND o.state <> 'pending'
  AND NOT EXISTS (SELECT 1 FROM auth.idempotency_key k WHERE k.scope = o.request_scope AND k.key = o.request_key);
