-- The key broker's dataset keys for the `tee` scene (issue "TEE scene"): each key wrapped
-- (AES-256-GCM, the dataset id as associated data) under the operator's master key, which
-- never enters the database. One key per dataset, made once; the chain records its making.
CREATE TABLE tee_dataset_keys (
    dataset_id TEXT PRIMARY KEY,
    wrapped_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
