-- The store: opens the SQLite file through core.store and runs the
-- versioned migrations. Everything above this module goes through the
-- query helpers with bound parameters; nothing here builds SQL from values.
local store = require("core.store")

local M = {}

-- Each entry moves the schema one version up, in order; never edit a
-- released entry, add a new one.
M.migrations = {
  [[
  CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    features TEXT NOT NULL DEFAULT '[]',
    data_key BLOB NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('caioo', 'personal_assistant')),
    groups TEXT NOT NULL DEFAULT '[]',
    default_tier TEXT NOT NULL DEFAULT 'external',
    trusted_sender INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT NOT NULL UNIQUE,
    token_hint TEXT NOT NULL,
    revoked_at TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, name)
  );
  -- The audit trail: every tools/call (kind 'call') and every settings
  -- change (kind 'setting'), hash-chained in id order.
  CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('call', 'setting')),
    tenant_id INTEGER,
    agent_id INTEGER,
    actor TEXT,
    execution_id TEXT,
    sender_tier TEXT,
    tool TEXT,
    action TEXT,
    params TEXT,
    decision TEXT,
    policies TEXT,
    outcome TEXT,
    detail TEXT,
    retries INTEGER,
    duration_ms REAL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
  );
  CREATE INDEX audit_tenant_at ON audit_log (tenant_id, at);
  CREATE INDEX audit_execution ON audit_log (execution_id);
  CREATE TABLE escalations (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    agent_id INTEGER NOT NULL REFERENCES agents(id),
    sender_tier TEXT NOT NULL,
    tool TEXT NOT NULL,
    action TEXT,
    arguments BLOB NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('hold', 'escalate')),
    reason TEXT NOT NULL,
    policy TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    decided_by TEXT,
    decided_at TEXT,
    decision_note TEXT,
    created_at TEXT NOT NULL
  );
  CREATE INDEX escalations_tenant ON escalations (tenant_id, status);
  ]],
  [[
  CREATE TABLE connections (
    tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id),
    provider TEXT NOT NULL DEFAULT 'twilio',
    account_sid TEXT NOT NULL,
    api_key_sid TEXT NOT NULL,
    secret BLOB NOT NULL,
    default_number TEXT,
    whatsapp_number TEXT,
    verify_service_sid TEXT,
    autonomous_sends INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('active', 'error')),
    status_reason TEXT,
    account_name TEXT,
    account_status TEXT,
    account_type TEXT,
    numbers TEXT NOT NULL DEFAULT '[]',
    hosts TEXT,
    last_tested_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE TABLE tenant_groups (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
  );
  ]],
  [[
  -- The write-ahead record of every outbound message or verification
  -- code: committed before the request goes out.
  CREATE TABLE sends (
    id INTEGER PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    agent_id INTEGER,
    escalation_id INTEGER,
    tool TEXT NOT NULL,
    action TEXT,
    recipient TEXT NOT NULL,
    request BLOB NOT NULL,
    body_hash TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'sent', 'failed', 'unknown')),
    sid TEXT,
    error_code INTEGER,
    error_message TEXT,
    created_at TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE INDEX sends_tenant_recipient ON sends (tenant_id, recipient, created_unix);
  CREATE INDEX sends_status ON sends (status);
  CREATE TABLE opt_outs (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    recipient TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, recipient)
  );
  ALTER TABLE escalations ADD COLUMN execution_id TEXT;
  ALTER TABLE escalations ADD COLUMN result TEXT;
  ]],
  [[
  -- The audit chain's version: 0 for the records hashed with plain SHA-256
  -- before the chain was keyed, 1 for HMAC-SHA256 under a key derived from
  -- the master key. anchored: how far the anchor file reached when the
  -- record was written.
  ALTER TABLE audit_log ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE audit_log ADD COLUMN anchored INTEGER;
  ]],
  [[
  -- Recovery finds the send records whose call left no audit record, and
  -- the send record of an approved escalation.
  CREATE INDEX audit_send_id ON audit_log
    ((CASE WHEN json_valid(detail) THEN json_extract(detail, '$.send_id') END));
  CREATE INDEX sends_escalation ON sends (escalation_id);
  ]],
  [[
  -- The operator's pages (keyset on id): a tenant's settings changes and
  -- calls, the calls of one execution (agent and id), a tenant's escalations.
  CREATE INDEX audit_tenant_kind_id ON audit_log (tenant_id, kind, id);
  CREATE INDEX audit_execution_calls ON audit_log (tenant_id, execution_id, agent_id, id) WHERE kind = 'call';
  CREATE INDEX escalations_tenant_id ON escalations (tenant_id, id);
  ]],
}

function M.now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- Open the database file and bring its schema up to date.
-- Returns db or nil, err.
function M.open(path)
  local db, err = store.open(path)
  if not db then return nil, ("database %s: %s"):format(path, err) end
  local version = db:user_version()
  if version > #M.migrations then
    db:close()
    return nil, ("database %s has schema version %d, newer than this runtime's %d")
      :format(path, version, #M.migrations)
  end
  for v = version + 1, #M.migrations do
    assert(db:begin())
    local ok, merr = db:exec(M.migrations[v])
    if ok then ok, merr = db:set_user_version(v) end
    if not ok then
      db:rollback()
      db:close()
      return nil, ("database migration %d failed: %s"):format(v, merr)
    end
    assert(db:commit())
  end
  return db
end

return M
