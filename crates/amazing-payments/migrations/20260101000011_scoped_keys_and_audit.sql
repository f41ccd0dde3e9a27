-- API keys for teams: what a key may do (its scopes), until when, when it
-- was last used, and the key it replaced (`apikey rotate`). Keys made before
-- scopes existed keep every power they had.
ALTER TABLE auth.api_key
    ADD COLUMN scopes text[] NOT NULL DEFAULT '{read,write,refund,admin}'
        CHECK (scopes <@ '{read,write,refund,admin}'::text[] AND cardinality(scopes) > 0),
    ADD COLUMN expires_at timestamptz,
    -- Written at most once per API_KEY_CACHE_TTL per instance: accurate to that.
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN rotated_from bigint REFERENCES auth.api_key (id);

-- Who asked for each change. An operation records the key that asked for
-- it; every history line written while carrying it out (by that request, a
-- retry, or the reconciler) names that key; `source` says which path wrote
-- the line. Lines with no key were made by Stripe's webhooks, the reconciler
-- on its own, or a request served without API keys.
ALTER TABLE payment.operation ADD COLUMN api_key_id bigint REFERENCES auth.api_key (id);
ALTER TABLE payment.history ADD COLUMN api_key_id bigint REFERENCES auth.api_key (id);
