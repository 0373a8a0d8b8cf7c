-- Tessera operator store: the further licences of a job that runs under several (an `fl`
-- job, issue 12: one licence per provider). `jobs.licence_id` stays the first; this column
-- holds the others as a JSON array of {"licence_id", "provider_party"} in the order named,
-- or '' for a job under one licence. Each is counted with the job's own count state: all
-- reserved at admission, all committed or released at the end.
-- Only adds a column, so its order among other migrations does not matter.
ALTER TABLE jobs ADD COLUMN co_licences TEXT NOT NULL DEFAULT '';
