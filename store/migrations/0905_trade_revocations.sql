-- Revocations by the data's owner (Tessera's `/revokeLicenses`): of a trade licence (table
-- A.37; every policy delivered under it with it) or of one delivered policy (table A.48).
-- Final: nothing lifts a revocation. Admission refuses the jobs of a revoked licence or
-- policy, and the jobs running under it are ended as the provider's doing.
CREATE TABLE trade_revocations (
    subject TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('licence', 'policy')),
    data_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at_ms INTEGER NOT NULL
);
