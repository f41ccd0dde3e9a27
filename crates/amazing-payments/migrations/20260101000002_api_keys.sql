-- API keys of the service's clients. Only a keyed hash (HMAC-SHA256) of each
-- key and a short visible prefix are kept: a database dump gives no usable key.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.api_key (
    id bigserial PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The visible start of the key (`ap_xxxxxxxx`), unique, to find the row.
    prefix text NOT NULL UNIQUE,
    hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
