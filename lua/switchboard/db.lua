-- The store: opens the SQLite file through core.store and runs the
-- versioned migrations. Everything above this module goes through the
-- query helpers with bound parameters; nothing here builds SQL from values.
local store = require("core.store")
local loop = require("core.loop")
local log = require("switchboard.log")
local time = require("switchboard.time")

local M = {}

-- Migration 10 in a store's SQL: connections per (tenant, integration),
-- the columns every integration has and its own settings as a JSON object
-- (what the first, one-per-tenant table held in columns moves there). A
-- send names the integration it went through (NULL for the sends recorded
-- before: found from the tool). object/json: the store's JSON functions;
-- cast: what makes the object text.
local function migration_10(object, json, cast)
  return ([[
  ALTER TABLE connections RENAME TO connections_v1;
  CREATE TABLE connections (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    integration TEXT NOT NULL,
    key_id TEXT,
    secret BLOB,
    status TEXT NOT NULL CHECK (status IN ('active', 'error')),
    status_reason TEXT,
    account_name TEXT,
    autonomous_sends INTEGER NOT NULL DEFAULT 0,
    settings TEXT NOT NULL DEFAULT '{}',
    last_tested_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, integration)
  );
  INSERT INTO connections (tenant_id, integration, key_id, secret, status, status_reason, account_name,
    autonomous_sends, settings, last_tested_at, created_at, updated_at)
  SELECT tenant_id, provider, api_key_sid, secret, status, status_reason, account_name, autonomous_sends,
    OBJECT('account_sid', account_sid, 'default_number', default_number, 'whatsapp_number', whatsapp_number,
      'verify_service_sid', verify_service_sid, 'account_status', account_status, 'account_type', account_type,
      'numbers', JSON(numbers), 'hosts', JSON(hosts))CAST,
    last_tested_at, created_at, updated_at
  FROM connections_v1;
  DROP TABLE connections_v1;
  ALTER TABLE sends ADD COLUMN integration TEXT;
  ]]):gsub("OBJECT", object):gsub("JSON%(", json .. "("):gsub("CAST", cast)
end

-- Each entry moves the schema one version up, in order; never edit a
-- released entry, add a new one. The same list serves both stores: an
-- entry is the SQL of both, written in SQLite's dialect and read by
-- PostgreSQL with its types (M.pg_types), or { sqlite = …, pg = … } where
-- the two must differ (expression indexes, JSON functions).
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
    provider TEXT NOT NULL,
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
  -- Recovery finds the send records whose call left no audit record, and
  -- the send record of an approved escalation.
  { sqlite = [[
  CREATE INDEX audit_send_id ON audit_log
    ((CASE WHEN json_valid(detail) THEN json_extract(detail, '$.send_id') END));
  CREATE INDEX sends_escalation ON sends (escalation_id);
  ]], pg = [[
  -- sb_json(text): the text as jsonb, NULL when it is not JSON (SQLite's
  -- json_valid + json_extract in one, usable in an index)
  CREATE FUNCTION sb_json(t text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $f$
  BEGIN
    RETURN t::jsonb;
  EXCEPTION WHEN others THEN
    RETURN NULL;
  END
  $f$;
  CREATE INDEX audit_send_id ON audit_log ((sb_json(detail) ->> 'send_id'));
  CREATE INDEX sends_escalation ON sends (escalation_id);
  ]] },
  [[
  -- The daily budget counts a tenant's sends since midnight: a range on
  -- created_unix within the tenant (sends_tenant_recipient ranges on it
  -- only within one recipient). Reconciliation finds a send by its SID.
  CREATE INDEX sends_tenant_created ON sends (tenant_id, created_unix);
  CREATE INDEX sends_sid ON sends (sid) WHERE sid IS NOT NULL;
  ]],
  [[
  -- The operator's pages (keyset on id): a tenant's settings changes and
  -- calls, the calls of one execution (agent and id), a tenant's escalations.
  CREATE INDEX audit_tenant_kind_id ON audit_log (tenant_id, kind, id);
  CREATE INDEX audit_execution_calls ON audit_log (tenant_id, execution_id, agent_id, id) WHERE kind = 'call';
  CREATE INDEX escalations_tenant_id ON escalations (tenant_id, id);
  ]],
  [[
  -- The master key version a tenant's data key is wrapped under (the key
  -- rotation rewraps them; a version is retired once no row names it).
  ALTER TABLE tenants ADD COLUMN data_key_version INTEGER NOT NULL DEFAULT 1;
  ]],
  [[
  -- Delivery receipts (providers' status callbacks): the message's delivery
  -- status, which only moves forward, its error code, when it was
  -- delivered; the SHA-256 of the send's callback token (the token itself
  -- is never stored), the key of the last callback applied, and the
  -- execution of the call (its receipts are shown with it).
  ALTER TABLE sends ADD COLUMN delivery_status TEXT;
  ALTER TABLE sends ADD COLUMN delivery_error INTEGER;
  ALTER TABLE sends ADD COLUMN delivery_updated_at TEXT;
  ALTER TABLE sends ADD COLUMN delivered_at TEXT;
  ALTER TABLE sends ADD COLUMN callback_token_hash TEXT;
  ALTER TABLE sends ADD COLUMN callback_key TEXT;
  ALTER TABLE sends ADD COLUMN execution_id TEXT;
  CREATE INDEX sends_delivery ON sends (tenant_id, delivery_status) WHERE delivery_status IS NOT NULL;
  ]],
  { sqlite = migration_10("json_object", "json", ""), pg = migration_10("json_build_object", "sb_json", "::text") },
  [[
  -- Several nodes on one database (PostgreSQL): each send has an owner,
  -- the node that wrote it; each node's heartbeat is its lease. The sends
  -- of a node whose lease expired are taken over by another node.
  ALTER TABLE sends ADD COLUMN node TEXT;
  ALTER TABLE escalations ADD COLUMN node TEXT;
  CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    heartbeat_unix INTEGER NOT NULL,
    started_at TEXT NOT NULL
  );
  CREATE INDEX sends_open ON sends (status) WHERE status IN ('pending', 'in_flight', 'unknown');
  ]],
}

M.now = time.now

-- {======================================================
-- Which store a handle is: "sqlite" (core.store's Db) or "pg" (a
-- switchboard.store.pg pool). The repositories write their SQL once where
-- both read it alike, and per store where they differ.
-- =======================================================

function M.dialect(db)
  if type(db) == "table" and db.dialect then return db.dialect end
  return "sqlite"
end

function M.is_pg(db) return M.dialect(db) == "pg" end

-- SQLite's column types in a CREATE TABLE / ADD COLUMN as PostgreSQL's:
-- an INTEGER PRIMARY KEY (SQLite's rowid) is a bigint identity (explicit
-- ids, as the audit chain writes, are kept), INTEGER bigint, BLOB bytea,
-- REAL double precision.
function M.pg_types(sql)
  sql = sql:gsub("(%w+) INTEGER PRIMARY KEY REFERENCES", "%1 bigint PRIMARY KEY REFERENCES")
  sql = sql:gsub("INTEGER PRIMARY KEY", "bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
  sql = sql:gsub("%f[%w]INTEGER%f[%W]", "bigint")
  sql = sql:gsub("%f[%w]BLOB%f[%W]", "bytea")
  sql = sql:gsub("%f[%w]REAL%f[%W]", "double precision")
  return sql
end

-- The SQL of migration v for the store of db.
function M.migration_sql(v, dialect)
  local m = M.migrations[v]
  if type(m) == "table" then m = m[dialect] end
  if dialect == "pg" then return M.pg_types(m) end
  return m
end

-- }======================================================

-- {======================================================
-- One write path: group commit.
--
-- SQLite has one connection here and every statement runs on the loop,
-- so a transaction is exclusive as long as no one waits inside it: each
-- transaction goes through M.transaction, which refuses to nest in one
-- that is open (its writes would be durable only at someone else's
-- COMMIT) and never yields between BEGIN IMMEDIATE and COMMIT.
--
-- The writer batches statements: a caller queues one and waits; on the
-- next loop turn everything queued by then is committed together (one
-- fsync under synchronous=FULL), each statement in a savepoint of its own
-- so that one statement's error fails only it. Statements queued while a
-- batch commits go in the next one. A caller gets what the statement
-- returned (the rowid of an insert, the change count of a run) once the
-- batch is on disk, or nil, err when the statement or the COMMIT failed
-- (then nothing of it was written).
-- =======================================================

-- Run fn(db) inside BEGIN IMMEDIATE … COMMIT. fn returns true (commit) or
-- nil, err (roll back). Returns true or nil, err. fn must not wait.
function M.transaction(db, fn)
  -- PostgreSQL: a connection of the pool per transaction; fn may wait
  if M.is_pg(db) then return db:transaction(fn) end
  if db:in_transaction() then
    return nil, "a transaction is already open: its writes would not be durable on their own"
  end
  local ok, err = db:begin()
  if not ok then return nil, err end
  local pok, res, ferr = pcall(fn, db)
  if pok and res then
    ok, err = db:commit()
    if ok then return true end
  else
    err = pok and ferr or res
  end
  if db:in_transaction() then db:rollback() end
  if not pok then error(res, 0) end
  return nil, err
end

local Writer = {}
Writer.__index = Writer

local writers = setmetatable({}, { __mode = "k" })

-- The writer of db (one per database). writer.sync = true makes every
-- statement commit at once, in its own transaction, without waiting.
local PgWriter = {}
PgWriter.__index = PgWriter

function M.writer(db)
  local w = writers[db]
  if not w and M.is_pg(db) then
    w = setmetatable({ db = db, batches = 0, statements = 0 }, PgWriter)
    writers[db] = w
  elseif not w then
    w = setmetatable({ db = db, queue = {}, scheduled = false, batches = 0, statements = 0 }, Writer)
    writers[db] = w
  end
  return w
end

local function exec(db, item)
  if item.insert then return db:insert(item.sql, table.unpack(item.args, 1, item.args.n)) end
  return db:run(item.sql, table.unpack(item.args, 1, item.args.n))
end

-- Run one queued statement in its savepoint; sets item.res / item.err.
local function run_item(db, item)
  local ok, err = db:run("SAVEPOINT sb_item")
  if not ok then item.err = err return end
  local res, serr = exec(db, item)
  if res then
    item.res = res
    db:run("RELEASE sb_item")
  else
    item.err = serr
    db:run("ROLLBACK TO sb_item")
    db:run("RELEASE sb_item")
  end
end

-- Commit everything queued now, in one transaction; then tell each
-- statement's caller. Does not wait (callable from anywhere).
function Writer:flush()
  local q = self.queue
  if #q == 0 then return true end
  self.queue = {}
  local pok, ok, err = pcall(M.transaction, self.db, function(db)
    if #q == 1 then
      -- alone in its batch, a statement needs no savepoint: its error
      -- rolls the transaction back, which holds nothing else
      local res, serr = exec(db, q[1])
      q[1].res = res
      if not res then return nil, serr end
      return true
    end
    for _, item in ipairs(q) do run_item(db, item) end
    return true
  end)
  if not pok then ok, err = nil, tostring(ok) end
  self.batches, self.statements = self.batches + 1, self.statements + #q
  for _, item in ipairs(q) do
    if not ok then item.res, item.err = nil, err end
    -- what must happen in the same step as the commit (counters, claims)
    if item.on_commit then
      local cok, cerr = pcall(item.on_commit, item.res, item.err)
      if not cok then log.error("db: a commit callback failed: %s", tostring(cerr)) end
    end
    if item.co then loop.wake(item.co, item.res, item.err) end
  end
  return ok, err
end

function Writer:schedule()
  if self.scheduled then return end
  self.scheduled = true
  loop.spawn(function()
    -- the next loop turn: what the calls ready in this one queue goes along
    loop.sleep(0)
    self.scheduled = false
    self:flush()
  end)
end

local function enqueue(self, insert, wait, on_commit, sql, ...)
  local item = { insert = insert, sql = sql, args = table.pack(...), on_commit = on_commit }
  if self.sync then
    -- commit now, without the loop (in-process harnesses that run calls
    -- outside the event loop set writer.sync = true)
    self.queue[#self.queue + 1] = item
    self:flush()
    if wait then return item.res, item.err end
    return true
  end
  if wait then
    item.co = coroutine.running()
    assert(coroutine.isyieldable(), "db writer: waiting for a commit needs a runtime coroutine")
  end
  self.queue[#self.queue + 1] = item
  self:schedule()
  if wait then return loop.wait() end
  return true
end

-- Queue an INSERT and wait for its batch: the rowid, or nil, err.
-- on_commit(rowid | nil, err), if given, runs right after the COMMIT.
function Writer:insert(on_commit, sql, ...)
  return enqueue(self, true, true, on_commit, sql, ...)
end

-- Queue a statement and wait for its batch: the change count, or nil, err.
function Writer:run(on_commit, sql, ...)
  return enqueue(self, false, true, on_commit, sql, ...)
end

-- Queue a statement without waiting; on_commit(count | nil, err) is told.
function Writer:later(on_commit, sql, ...)
  return enqueue(self, false, false, on_commit, sql, ...)
end

-- On PostgreSQL every statement commits on its own (a connection of the
-- pool each, so nothing waits for the others' commits): the writer runs it
-- and tells on_commit; later runs it at once in the caller's coroutine (so
-- a settle is stored before the call's audit record) or, outside one, in a
-- coroutine of its own.
local function pg_run(self, insert, on_commit, sql, ...)
  local res, err
  if insert then res, err = self.db:insert(sql, ...) else res, err = self.db:run(sql, ...) end
  self.batches, self.statements = self.batches + 1, self.statements + 1
  if on_commit then
    local cok, cerr = pcall(on_commit, res, err)
    if not cok then log.error("db: a commit callback failed: %s", tostring(cerr)) end
  end
  return res, err
end

function PgWriter:flush() return true end
function PgWriter:insert(on_commit, sql, ...) return pg_run(self, true, on_commit, sql, ...) end
function PgWriter:run(on_commit, sql, ...) return pg_run(self, false, on_commit, sql, ...) end
function PgWriter:later(on_commit, sql, ...)
  if coroutine.isyieldable() then
    pg_run(self, false, on_commit, sql, ...)
  else
    local args = table.pack(...)
    loop.spawn(function() pg_run(self, false, on_commit, sql, table.unpack(args, 1, args.n)) end)
  end
  return true
end

-- }======================================================

-- Caches of per-tenant rows (a tenant's connection, its countries) are
-- told of every change to that tenant's settings: fn(db, tenant_id).
local on_change = {}

function M.on_tenant_change(fn)
  for _, f in ipairs(on_change) do if f == fn then return end end
  on_change[#on_change + 1] = fn
end

-- On PostgreSQL the other nodes are told too (switchboard.cluster), unless
-- the change came from one of them (from_peer).
function M.tenant_changed(db, tenant_id, from_peer)
  for _, f in ipairs(on_change) do f(db, tenant_id) end
  if not from_peer and M.is_pg(db) then require("switchboard.cluster").publish(db, tenant_id) end
end

-- The advisory lock key (pg_advisory_xact_lock) that serializes the
-- nodes' migrations.
M.MIGRATE_LOCK = 0x5342000000000001

-- Open the PostgreSQL store (cfg: the config's store table: conninfo,
-- password_file, pool_size) and bring its schema up to date; in a runtime
-- coroutine. Returns the pool or nil, err. Several nodes starting at once
-- migrate one after the other (an advisory lock in the transaction).
function M.open_pg(cfg)
  local pool = require("switchboard.store.pg").new({ conninfo = cfg.conninfo, password_file = cfg.password_file,
                                                      size = cfg.pool_size, connect_timeout = cfg.connect_timeout })
  pool.dialect = "pg"
  local version
  local ok, err = pool:transaction(function(db)
    local r, lerr = db:run("SELECT pg_advisory_xact_lock(?)", M.MIGRATE_LOCK)
    if not r then return nil, lerr end
    r, lerr = db:exec("CREATE TABLE IF NOT EXISTS sb_schema (version integer NOT NULL);"
      .. " INSERT INTO sb_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM sb_schema)")
    if not r then return nil, lerr end
    local row
    row, lerr = db:row("SELECT version FROM sb_schema")
    if not row then return nil, lerr end
    version = row.version
    if version > #M.migrations then
      return nil, ("the database has schema version %d, newer than this runtime's %d"):format(version, #M.migrations)
    end
    for v = version + 1, #M.migrations do
      local mok, merr = db:exec(M.migration_sql(v, "pg"))
      if not mok then return nil, ("database migration %d failed: %s"):format(v, merr) end
    end
    if version < #M.migrations then
      r, lerr = db:run("UPDATE sb_schema SET version = ?", #M.migrations)
      if not r then return nil, lerr end
    end
    return true
  end)
  if not ok then
    pool:close()
    return nil, "postgresql store: " .. tostring(err)
  end
  return pool
end

-- Open the store: a path (the SQLite file) or the config's store table
-- ({ kind = "sqlite", path } or { kind = "pg", … }), and bring its schema
-- up to date. Returns db or nil, err.
function M.open(path)
  if type(path) == "table" then
    if path.kind == "pg" then return M.open_pg(path) end
    path = path.path
  end
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
    local ok, merr = db:exec(M.migration_sql(v, "sqlite"))
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
