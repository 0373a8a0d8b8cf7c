-- Tessera operator store: who is calling (issue "Who is calling"): users with roles, the
-- groups the operator records them in, parties owned by users, and API and registration
-- tokens stored as the SHA-256 of their secret. Numbered 0900 so that it never collides with
-- migrations added in parallel; sqlx applies any migration not yet applied.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    -- Role names joined by ',' (tessera_auth::Roles), at least one.
    roles          TEXT NOT NULL CHECK (roles != ''),
    created_at_ms  INTEGER NOT NULL,
    disabled_at_ms INTEGER
);

CREATE TABLE group_members (
    group_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(user_id),
    added_at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_by_user ON group_members(user_id);

CREATE TABLE parties (
    party_id      TEXT PRIMARY KEY,
    owner_user_id TEXT NOT NULL REFERENCES users(user_id),
    created_at_ms INTEGER NOT NULL
);

-- An API token belongs to a user, a registration token to a party; never both.
CREATE TABLE tokens (
    token_id      TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('api', 'registration')),
    user_id       TEXT REFERENCES users(user_id),
    party_id      TEXT REFERENCES parties(party_id),
    secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
    label         TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    CHECK ((kind = 'api' AND user_id IS NOT NULL AND party_id IS NULL)
        OR (kind = 'registration' AND party_id IS NOT NULL AND user_id IS NULL))
);
CREATE INDEX tokens_by_user ON tokens(user_id);
