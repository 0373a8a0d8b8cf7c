-- The PSI protocol a job runs (`rr22` or `ecdh`, tessera_core::PsiProtocol), on the job and on
-- each usage event measured for it. Jobs and usage recorded before the protocol was chosen per
-- job ran ECDH.
ALTER TABLE jobs ADD COLUMN protocol TEXT NOT NULL DEFAULT 'ecdh';
ALTER TABLE usage_events ADD COLUMN protocol TEXT NOT NULL DEFAULT 'ecdh';
