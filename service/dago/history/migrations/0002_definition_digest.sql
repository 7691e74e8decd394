-- dago run history, version 2: runs submitted from a stored definition
-- (SubmitGraphRequest.definition) record its name and version in the columns version 1
-- reserved (indexed by dago_runs_definition), and its content digest here.

ALTER TABLE dago_runs ADD COLUMN definition_digest text;
