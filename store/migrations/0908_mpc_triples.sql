-- Tessera operator store: where an `mpc` job's Beaver triples come from (issue 11, the
-- operator's dealer): 'ot', 'dealer', or '' (not an mpc job, or admitted before this column).
-- Only adds a column, so its order among other migrations does not matter.
ALTER TABLE jobs ADD COLUMN mpc_triples TEXT NOT NULL DEFAULT '';
