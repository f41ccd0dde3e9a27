-- A payment charged while the customer is away (a saved card, a renewal):
-- sent to Stripe as `off_session`, so that a bank that wants the customer
-- declines it (`authentication_required`) instead of waiting for them.
-- Kept on the payment so that every attempt sends the same request.
ALTER TABLE payment.payment ADD COLUMN off_session boolean NOT NULL DEFAULT false;
