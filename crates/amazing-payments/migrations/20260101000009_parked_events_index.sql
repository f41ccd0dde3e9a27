-- The metrics count parked Stripe events on every scrape; processed events
-- are kept, so without this the count would scan the whole table.
CREATE INDEX IF NOT EXISTS event_parked_idx ON webhook.event (id) WHERE state = 'parked';
