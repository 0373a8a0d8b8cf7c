-- Tessera operator store: the audit chain is append-only, and signed checkpoints of its head
-- are kept (issue 8 item 11). Numbered 0011 so that it never collides with migrations added
-- in parallel; sqlx applies any migration not yet applied, whatever its number.

-- Entries are never changed or deleted, and a new entry must extend the chain: the next
-- sequence number, linked to the last entry's hash.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_extends_the_chain BEFORE INSERT ON audit_log
WHEN NEW.seq != COALESCE((SELECT MAX(seq) FROM audit_log), 0) + 1
  OR NEW.prev_hash != COALESCE(
       (SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1),
       '0000000000000000000000000000000000000000000000000000000000000000')
BEGIN SELECT RAISE(ABORT, 'an audit entry must extend the chain'); END;

-- Heads of the chain signed with the node's ed25519 key (tessera_core::checkpoint): entry
-- `seq` hashed to `head_hash` at `at_ms`. Append-only, and only for a head the chain has.
CREATE TABLE audit_checkpoints (
    seq           INTEGER PRIMARY KEY CHECK (seq > 0),
    head_hash     TEXT NOT NULL,
    at_ms         INTEGER NOT NULL,
    signature_hex TEXT NOT NULL
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_match_the_chain BEFORE INSERT ON audit_checkpoints
WHEN NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.head_hash)
BEGIN SELECT RAISE(ABORT, 'a checkpoint must name an entry of the chain with its hash'); END;
