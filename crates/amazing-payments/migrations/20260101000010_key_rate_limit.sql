-- A key's own rate limit (requests a second on each instance), set with
-- `amazing-payments apikey rate-limit`; NULL: the service's RATE_LIMIT.
ALTER TABLE auth.api_key ADD COLUMN rate_limit integer CHECK (rate_limit BETWEEN 1 AND 1000000);
