-- Adopts the database made by the earlier Go service (yoyo migrations), or
-- creates the same schema on an empty database. Every statement is safe on
-- both: rows of the old service are kept as they are.

CREATE SCHEMA IF NOT EXISTS customer;

CREATE OR REPLACE FUNCTION customer.update_modified() RETURNS trigger AS $$
BEGIN
    NEW.modified_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE IF NOT EXISTS customer.customer (
    id serial PRIMARY KEY,
    name text,
    email text NOT NULL,
    stripe_customer_key text,
    stripe_charge_date text,
    created_at timestamp DEFAULT now(),
    modified_at timestamp DEFAULT now()
);

DROP TRIGGER IF EXISTS customer_update ON customer.customer;
CREATE TRIGGER customer_update BEFORE UPDATE ON customer.customer
    FOR EACH ROW EXECUTE FUNCTION customer.update_modified();

-- Room for more than two billion customers.
ALTER TABLE customer.customer ALTER COLUMN id TYPE bigint;
ALTER SEQUENCE customer.customer_id_seq AS bigint;

-- The old columns hold the server's local time without a zone; read them in
-- the session's zone (the server's) and keep instants from now on.
ALTER TABLE customer.customer
    ALTER COLUMN created_at TYPE timestamptz,
    ALTER COLUMN modified_at TYPE timestamptz;
UPDATE customer.customer SET created_at = coalesce(created_at, now()), modified_at = coalesce(modified_at, now())
    WHERE created_at IS NULL OR modified_at IS NULL;
ALTER TABLE customer.customer
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN modified_at SET NOT NULL;

-- ListCustomers filters by e-mail without regard to case.
CREATE INDEX IF NOT EXISTS customer_email_lower_idx ON customer.customer (lower(email));
