-- The T/AI 123.12 trade flow (appendix A.1–A.3): registrations, publications (registered and
-- controlled data), demands, confirmations, settlements, licences (table A.37), deliveries,
-- the usage policies of controlled deliveries, uploaded data files and the licensors' signing
-- keys. Records keep the validated request as JSON with the standard's field names.
CREATE TABLE trade_registrations (
    registration_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    data_id TEXT NOT NULL,
    record_json TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX trade_registrations_data ON trade_registrations (data_id);

CREATE TABLE trade_publications (
    registration_id TEXT NOT NULL,
    data_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    controlled INTEGER NOT NULL CHECK (controlled IN (0, 1)),
    record_json TEXT,
    free INTEGER NOT NULL CHECK (free IN (0, 1)),
    price_micros INTEGER NOT NULL CHECK (price_micros >= 0),
    status TEXT NOT NULL CHECK (status IN ('YES', 'NO')),
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (registration_id, data_id)
);

CREATE TABLE trade_demands (
    demand_id TEXT PRIMARY KEY,
    demander TEXT NOT NULL,
    record_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('registered', 'published', 'revoked')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE trade_confirmations (
    confirm_id TEXT PRIMARY KEY,
    demand_id TEXT NOT NULL UNIQUE REFERENCES trade_demands (demand_id),
    registration_id TEXT NOT NULL,
    data_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    demander TEXT NOT NULL,
    price_micros INTEGER NOT NULL CHECK (price_micros >= 0),
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE trade_settlements (
    confirm_id TEXT PRIMARY KEY REFERENCES trade_confirmations (confirm_id),
    licenses_id TEXT NOT NULL UNIQUE,
    payment_json TEXT NOT NULL,
    sealed_key_json TEXT NOT NULL,
    delivery_key BLOB NOT NULL,
    settled_at_ms INTEGER NOT NULL
);

CREATE TABLE trade_licences (
    licenses_id TEXT PRIMARY KEY,
    confirm_id TEXT NOT NULL REFERENCES trade_confirmations (confirm_id),
    registration_id TEXT NOT NULL,
    data_id TEXT NOT NULL,
    licensor TEXT NOT NULL,
    licensee TEXT NOT NULL,
    licence_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('valid', 'superseded')),
    superseded_by TEXT,
    issued_at_ms INTEGER NOT NULL
);
CREATE INDEX trade_licences_data ON trade_licences (data_id, status);

CREATE TABLE trade_deliveries (
    delivery_id TEXT PRIMARY KEY,
    confirm_id TEXT NOT NULL REFERENCES trade_confirmations (confirm_id),
    licenses_id TEXT NOT NULL,
    proof_json TEXT NOT NULL,
    delivered_at_ms INTEGER NOT NULL
);
CREATE INDEX trade_deliveries_confirm ON trade_deliveries (confirm_id, delivered_at_ms);

CREATE TABLE trade_policies (
    policy_id TEXT PRIMARY KEY,
    licenses_id TEXT NOT NULL,
    data_id TEXT NOT NULL,
    licence_id TEXT NOT NULL UNIQUE REFERENCES licences (licence_id),
    policy_name TEXT NOT NULL,
    start_date TEXT NOT NULL,
    end_date TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX trade_policies_licence ON trade_policies (licenses_id);

CREATE TABLE trade_files (
    registration_id TEXT PRIMARY KEY REFERENCES trade_registrations (registration_id),
    sha256 TEXT NOT NULL,
    bytes BLOB NOT NULL,
    uploaded_at_ms INTEGER NOT NULL
);

CREATE TABLE trade_licensor_keys (
    party TEXT PRIMARY KEY,
    secret_key BLOB NOT NULL CHECK (length(secret_key) = 32),
    created_at_ms INTEGER NOT NULL
);
