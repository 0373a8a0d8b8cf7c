-- Tessera operator store, version 2: holds (pending transfers), bills, provider statements,
-- product limits and account freezes.

-- Pending amounts: a hold reserves funds on its debit account until it is posted or voided.
-- Spendable balance = credits - debits - debits_pending.
ALTER TABLE ledger_accounts ADD COLUMN debits_pending_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_accounts ADD COLUMN credits_pending_micros INTEGER NOT NULL DEFAULT 0;

-- kind: posted (a plain transfer), pending (a hold), post_pending (posts a hold, amount <= the
-- hold), void_pending (releases a hold). A hold is resolved at most once: the unique index on
-- pending_id makes a second post or void impossible.
ALTER TABLE ledger_transfers ADD COLUMN kind TEXT NOT NULL DEFAULT 'posted';
ALTER TABLE ledger_transfers ADD COLUMN pending_id TEXT REFERENCES ledger_transfers(transfer_id);
CREATE UNIQUE INDEX ledger_transfers_resolution ON ledger_transfers(pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX ledger_transfers_by_job ON ledger_transfers(job_id);

-- Rows the provider declares for a dataset; the hold of a job is sized on it.
ALTER TABLE datasets ADD COLUMN declared_rows INTEGER CHECK (declared_rows IS NULL OR declared_rows >= 0);

CREATE TABLE billing_settings (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO billing_settings (key, value) VALUES ('late_window_ms', 259200000);

-- One bill per customer and calendar month (UTC). Closed bills never change.
CREATE TABLE bills (
    bill_id       TEXT PRIMARY KEY,
    customer      TEXT NOT NULL,
    period        TEXT NOT NULL,          -- YYYY-MM
    state         TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    created_at_ms INTEGER NOT NULL,
    closed_at_ms  INTEGER,
    UNIQUE (customer, period)
);

CREATE TABLE bill_lines (
    line_id                  TEXT PRIMARY KEY,
    bill_id                  TEXT NOT NULL REFERENCES bills(bill_id),
    customer                 TEXT NOT NULL,
    job_id                   TEXT,
    kind                     TEXT NOT NULL,       -- usage | refund
    product                  TEXT NOT NULL,
    provider                 TEXT NOT NULL DEFAULT '',
    corrects_period          TEXT,                -- set on a correction line: the period it belongs to
    event_time_ms            INTEGER NOT NULL,
    arrival_time_ms          INTEGER NOT NULL,
    service_start_ms         INTEGER NOT NULL,
    service_end_ms           INTEGER NOT NULL,
    original_micros          INTEGER NOT NULL,
    platform_discount_micros INTEGER NOT NULL DEFAULT 0,
    customer_discount_micros INTEGER NOT NULL DEFAULT 0,
    coupon_micros            INTEGER NOT NULL DEFAULT 0,
    deduction_voucher_micros INTEGER NOT NULL DEFAULT 0,
    recharge_voucher_micros  INTEGER NOT NULL DEFAULT 0,
    cash_micros              INTEGER NOT NULL DEFAULT 0,
    credit_micros            INTEGER NOT NULL DEFAULT 0,
    arrears_micros           INTEGER NOT NULL DEFAULT 0,
    provider_micros          INTEGER NOT NULL DEFAULT 0,
    operator_micros          INTEGER NOT NULL DEFAULT 0,
    note                     TEXT NOT NULL DEFAULT '',
    -- original - discount = paid = balance + credit + vouchers + coupons (manual 3.8)
    CHECK (original_micros - platform_discount_micros - customer_discount_micros
           = recharge_voucher_micros + cash_micros + arrears_micros + credit_micros
             + deduction_voucher_micros + coupon_micros),
    CHECK (provider_micros + operator_micros
           = original_micros - platform_discount_micros - customer_discount_micros)
);
CREATE INDEX bill_lines_by_bill ON bill_lines(bill_id);

-- Closed bills never change: lines are append-only and only reach open bills.
CREATE TRIGGER bill_lines_no_update BEFORE UPDATE ON bill_lines
BEGIN SELECT RAISE(ABORT, 'bill lines are append-only'); END;
CREATE TRIGGER bill_lines_no_delete BEFORE DELETE ON bill_lines
BEGIN SELECT RAISE(ABORT, 'bill lines are append-only'); END;
CREATE TRIGGER bill_lines_open_bill_only BEFORE INSERT ON bill_lines
WHEN (SELECT state FROM bills WHERE bill_id = NEW.bill_id) = 'closed'
BEGIN SELECT RAISE(ABORT, 'bill is closed'); END;
CREATE TRIGGER bills_closed_never_change BEFORE UPDATE ON bills
WHEN OLD.state = 'closed'
BEGIN SELECT RAISE(ABORT, 'bill is closed'); END;
CREATE TRIGGER bills_no_delete BEFORE DELETE ON bills
BEGIN SELECT RAISE(ABORT, 'bills are never deleted'); END;

-- A provider's statement for one closed month, and its payout.
CREATE TABLE provider_statements (
    provider           TEXT NOT NULL,
    period             TEXT NOT NULL,
    lines              INTEGER NOT NULL,
    paid_micros        INTEGER NOT NULL,
    operator_micros    INTEGER NOT NULL,
    provider_micros    INTEGER NOT NULL,
    payout_transfer_id TEXT,
    created_at_ms      INTEGER NOT NULL,
    PRIMARY KEY (provider, period)
);

-- Product limits (manual 3.6.5): scope platform (customer = '', product = ''), product
-- (product set) or customer (customer set, product optional).
CREATE TABLE limit_configs (
    scope               TEXT NOT NULL CHECK (scope IN ('platform', 'product', 'customer')),
    customer            TEXT NOT NULL DEFAULT '',
    product             TEXT NOT NULL DEFAULT '',
    min_purchase_micros INTEGER,
    min_freeze_micros   INTEGER,
    enabled             INTEGER NOT NULL DEFAULT 1,
    updated_at_ms       INTEGER NOT NULL,
    PRIMARY KEY (scope, customer, product)
);

CREATE TABLE platform_whitelist (
    customer      TEXT PRIMARY KEY,
    added_at_ms   INTEGER NOT NULL
);

-- manual: none | frozen | thawed; auto_frozen: the last automatic decision.
CREATE TABLE account_freezes (
    customer      TEXT PRIMARY KEY,
    manual        TEXT NOT NULL DEFAULT 'none' CHECK (manual IN ('none', 'frozen', 'thawed')),
    manual_reason TEXT NOT NULL DEFAULT '',
    auto_frozen   INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL
);
