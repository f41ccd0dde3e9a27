-- API keys for teams: what a key may do (its scopes), until when, when it
-- was last used, and the key it replaced (`apikey rotate`). Keys made before
-- scopes existed keep every power they had.
ALTER TABLE auth.api_key
    ADD COLUMN scopes text[] NOT NULL DEFAULT '{read,write,refund,admin}'
        CHECK (scopes <@ '{read,write,refund,admin}'::text[] AND cardinality(scopes) > 0),
    ADD COLUMN expires_at timestamptz,
    -- Written at most once per API_KEY_CACHE_TTL per instance: accurate to that.
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN rotated_from bigint REFERENCES auth.api_key (id),
    -- The first key of a rotation's line (NULL: the key itself). The keys of
    -- one line share their idempotency keys and their rate limit, so that a
    -- client retrying with the new key finds what it did with the old one.
    ADD COLUMN lineage bigint REFERENCES auth.api_key (id);

-- Who asked for each change. An operation records the key that asked for
-- it; every history line written while carrying it out (by that request, a
-- retry, the reconciler, or a webhook that brought its outcome first) names
-- that key; `source` says which path wrote the line. Lines with no key were
-- Stripe's own changes, or made while the service ran without API keys.
-- No foreign key: keys are never deleted, and a key row every insert would
-- lock (FOR KEY SHARE) would become a hot spot under one busy key. Adding a
-- nullable column without a default rewrites nothing.
ALTER TABLE payment.operation ADD COLUMN api_key_id bigint;
ALTER TABLE payment.history ADD COLUMN api_key_id bigint;
