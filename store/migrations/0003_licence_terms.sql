-- Tessera operator store, version 3: licence terms sold as prepaid monthly subscriptions
-- (operations manual 1.4.5). A licence with a monthly price admits jobs only inside a paid term.
ALTER TABLE licences ADD COLUMN monthly_price_micros INTEGER NOT NULL DEFAULT 0 CHECK (monthly_price_micros >= 0);

CREATE TABLE licence_subscriptions (
    licence_id    TEXT NOT NULL REFERENCES licences(licence_id),
    customer      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'closed')),
    -- Incremented when a closed subscription is ordered again; terms of older generations
    -- stay as history.
    generation    INTEGER NOT NULL DEFAULT 0,
    closed_at_ms  INTEGER,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (licence_id, customer)
);

-- Terms are append-only: an order, then renewals.
CREATE TABLE licence_terms (
    licence_id             TEXT NOT NULL,
    customer               TEXT NOT NULL,
    generation             INTEGER NOT NULL,
    seq                    INTEGER NOT NULL,
    kind                   TEXT NOT NULL CHECK (kind IN ('order', 'renewal')),
    start_ms               INTEGER NOT NULL,
    end_ms                 INTEGER NOT NULL,
    months                 INTEGER NOT NULL CHECK (months > 0),
    original_micros        INTEGER NOT NULL CHECK (original_micros >= 0),
    refundable_paid_micros INTEGER NOT NULL CHECK (refundable_paid_micros >= 0),
    created_at_ms          INTEGER NOT NULL,
    PRIMARY KEY (licence_id, customer, generation, seq),
    FOREIGN KEY (licence_id, customer) REFERENCES licence_subscriptions(licence_id, customer)
);
CREATE TRIGGER licence_terms_no_update BEFORE UPDATE ON licence_terms
BEGIN SELECT RAISE(ABORT, 'licence terms are append-only'); END;
CREATE TRIGGER licence_terms_no_delete BEFORE DELETE ON licence_terms
BEGIN SELECT RAISE(ABORT, 'licence terms are append-only'); END;
