-- Tessera operator store, version 1.
CREATE TABLE workers (
    worker_id        TEXT PRIMARY KEY,
    party            TEXT NOT NULL,
    attributes_json  TEXT NOT NULL,
    peer_addr        TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL
);

CREATE TABLE datasets (
    dataset_id    TEXT PRIMARY KEY,
    owner_party   TEXT NOT NULL,
    location      TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE licences (
    licence_id               TEXT PRIMARY KEY,
    licensor                 TEXT NOT NULL,
    licensee                 TEXT NOT NULL,
    dataset_id               TEXT NOT NULL REFERENCES datasets(dataset_id),
    policy_json              TEXT NOT NULL,
    price_per_job_micros     INTEGER NOT NULL CHECK (price_per_job_micros >= 0),
    price_per_1k_rows_micros INTEGER NOT NULL CHECK (price_per_1k_rows_micros >= 0),
    operator_share_bps       INTEGER NOT NULL CHECK (operator_share_bps BETWEEN 0 AND 10000),
    created_at_ms            INTEGER NOT NULL
);

-- Run counts per licence scene. remaining is NULL for unlimited scenes.
CREATE TABLE licence_scenes (
    licence_id TEXT NOT NULL REFERENCES licences(licence_id),
    scene      TEXT NOT NULL,
    counts     INTEGER,
    remaining  INTEGER CHECK (remaining IS NULL OR remaining >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    used       INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (licence_id, scene)
);

CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY,
    licence_id      TEXT NOT NULL,
    scene           TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    mode            TEXT NOT NULL,
    state           TEXT NOT NULL,
    -- none (refused), reserved, committed, released
    count_state     TEXT NOT NULL,
    request_json    TEXT NOT NULL,
    reasons_json    TEXT NOT NULL DEFAULT '[]',
    error           TEXT NOT NULL DEFAULT '',
    result_size     INTEGER,
    result_location TEXT NOT NULL DEFAULT '',
    charge_micros   INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    finished_at_ms  INTEGER
);
CREATE INDEX jobs_by_state ON jobs(state);

CREATE TABLE tasks (
    task_id       TEXT PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(job_id),
    worker_id     TEXT NOT NULL,
    party         TEXT NOT NULL,
    role          TEXT NOT NULL,
    state         TEXT NOT NULL,
    spec_json     TEXT NOT NULL,
    error_kind    TEXT NOT NULL DEFAULT '',
    error         TEXT NOT NULL DEFAULT '',
    usage_json    TEXT,
    result_size   INTEGER,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX tasks_by_job ON tasks(job_id);

CREATE TABLE usage_events (
    event_id        TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    party           TEXT NOT NULL,
    metric          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity >= 0),
    event_time_ms   INTEGER NOT NULL,
    arrival_time_ms INTEGER NOT NULL
);
CREATE INDEX usage_by_job ON usage_events(job_id);

-- balance = credits - debits; min_balance_micros NULL means no lower limit.
CREATE TABLE ledger_accounts (
    name               TEXT PRIMARY KEY,
    debits_micros      INTEGER NOT NULL DEFAULT 0,
    credits_micros     INTEGER NOT NULL DEFAULT 0,
    min_balance_micros INTEGER
);

CREATE TABLE ledger_transfers (
    transfer_id    TEXT PRIMARY KEY,
    debit_account  TEXT NOT NULL REFERENCES ledger_accounts(name),
    credit_account TEXT NOT NULL REFERENCES ledger_accounts(name),
    amount_micros  INTEGER NOT NULL CHECK (amount_micros > 0),
    job_id         TEXT,
    memo           TEXT NOT NULL DEFAULT '',
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
