-- A request may resume an operation that another request recorded (the same
-- capture or cancel sent again under another client key). Its key then points
-- at that operation, so that its own retry finds it instead of starting anew.
ALTER TABLE auth.idempotency_key ADD COLUMN operation_id bigint REFERENCES payment.operation (id);
