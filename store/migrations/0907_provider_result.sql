-- Tessera operator store: the provider's own result file of a `both`-mode PSI job (issue 15,
-- item 1: the intersection to both parties). Only adds columns, so its order among other
-- migrations does not matter.

-- Its name in the provider worker's output directory, size in bytes, data rows, SHA-256 (hex).
ALTER TABLE jobs ADD COLUMN provider_result_location TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN provider_result_bytes INTEGER CHECK (provider_result_bytes >= 0);
ALTER TABLE jobs ADD COLUMN provider_result_rows INTEGER CHECK (provider_result_rows >= 0);
ALTER TABLE jobs ADD COLUMN provider_result_sha256 TEXT NOT NULL DEFAULT '';
