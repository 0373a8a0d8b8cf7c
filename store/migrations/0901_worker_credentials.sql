-- Tessera operator store: worker credentials (issue "Who is calling", item 4). A worker that
-- registers with its party's registration token is issued a credential for its worker id;
-- the credential, not the registration token, authenticates its later calls. Registering the
-- same id again with a registration token revokes the previous credential, so a process that
-- lost its id cannot keep acting under it. Only the SHA-256 of the secret is stored.

CREATE TABLE worker_credentials (
    token_id      TEXT PRIMARY KEY,
    worker_id     TEXT NOT NULL,
    party         TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
    issued_at_ms  INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
-- At most one live credential per worker id.
CREATE UNIQUE INDEX worker_credentials_live ON worker_credentials(worker_id)
    WHERE revoked_at_ms IS NULL;
