-- One number that changes with every change to who may call: users (roles, disabling),
-- group members, parties (owners), API and registration tokens, worker credentials. The
-- operator caches authenticated tokens and drops the cache when this number moved
-- (issue "The control plane at 2,000 admissions a second"). Kept by triggers, so no write
-- path, present or future, can forget it.
CREATE TABLE accounts_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO accounts_version (id, version) VALUES (1, 0);

CREATE TRIGGER accounts_version_users_insert AFTER INSERT ON users
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_users_update AFTER UPDATE ON users
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_users_delete AFTER DELETE ON users
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER accounts_version_group_members_insert AFTER INSERT ON group_members
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_group_members_update AFTER UPDATE ON group_members
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_group_members_delete AFTER DELETE ON group_members
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER accounts_version_parties_insert AFTER INSERT ON parties
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_parties_update AFTER UPDATE ON parties
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_parties_delete AFTER DELETE ON parties
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER accounts_version_tokens_insert AFTER INSERT ON tokens
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_tokens_update AFTER UPDATE ON tokens
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_tokens_delete AFTER DELETE ON tokens
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER accounts_version_worker_credentials_insert AFTER INSERT ON worker_credentials
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_worker_credentials_update AFTER UPDATE ON worker_credentials
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_version_worker_credentials_delete AFTER DELETE ON worker_credentials
BEGIN UPDATE accounts_version SET version = version + 1 WHERE id = 1; END;
