-- Tessera operator store (issue 8, money and counts): the delivery milestone of a job and the
-- client's idempotency key of a submission.
--
-- delivered_at_ms / delivered_rows: when the engine's delivery point was reported (for PSI:
-- the sender handed its last frame to the link, after which the receiver needs nothing more
-- to compute the output) and the provider rows the sender reported then. Once set, a failure or
-- cancellation consumes the count and charges the job (accounting::settle::delivered_job).
ALTER TABLE jobs ADD COLUMN delivered_at_ms INTEGER;
ALTER TABLE jobs ADD COLUMN delivered_rows INTEGER CHECK (delivered_rows IS NULL OR delivered_rows >= 0);

-- request_id: the submitting user's idempotency key; one job per (user, request_id).
ALTER TABLE jobs ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX jobs_by_request ON jobs(user_id, request_id) WHERE request_id IS NOT NULL;
