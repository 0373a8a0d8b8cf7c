-- Tessera operator store: results and failures of PSI jobs (issue 8 items 4, 12, 17). Numbered
-- 0804 (issue 8, item 4) so that it cannot collide with migrations added in parallel; it only
-- adds columns and an index, so its order among them does not matter.

-- Which parties a job joins and the result name it asked for (refused at admission when an
-- unfinished or succeeded job of the same buyer party recorded it).
ALTER TABLE jobs ADD COLUMN buyer_party TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN provider_party TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN output_name TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_output ON jobs(buyer_party, output_name) WHERE output_name <> '';

-- The result file as written: size in bytes, data rows, SHA-256 (hex).
ALTER TABLE jobs ADD COLUMN result_bytes INTEGER CHECK (result_bytes >= 0);
ALTER TABLE jobs ADD COLUMN result_rows INTEGER CHECK (result_rows >= 0);
ALTER TABLE jobs ADD COLUMN result_sha256 TEXT NOT NULL DEFAULT '';

-- Rows each party left out because their key was empty.
ALTER TABLE jobs ADD COLUMN buyer_empty_keys INTEGER CHECK (buyer_empty_keys >= 0);
ALTER TABLE jobs ADD COLUMN provider_empty_keys INTEGER CHECK (provider_empty_keys >= 0);

-- Where a failure happened (the task's role and party, empty when not on a party's side) and
-- its stable kind; `error` keeps the detail for the operator and the audit chain.
ALTER TABLE jobs ADD COLUMN error_role TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN error_party TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN error_kind TEXT NOT NULL DEFAULT '';
