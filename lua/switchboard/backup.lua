-- Backups of the database: `admin backup FILE` copies it while the server
-- serves (SQLite's online backup API, a few pages per loop turn), and
-- `switchboard restore FILE`, with the server stopped, checks a backup
-- (a Switchboard database of a known schema version whose audit chain
-- verifies with the master key) and puts it in place of the database.
local loop = require("core.loop")
local store = require("core.store")
local lfs = require("lfs")
local db_mod = require("switchboard.db")
local audit = require("switchboard.audit")
local audit_store = require("switchboard.store.audit")
local backup_store = require("switchboard.store.backup")

local M = {}

local function exists(path) return lfs.attributes(path) ~= nil end

-- Pages copied per loop turn: 64 pages of 4 KiB, well under a millisecond,
-- so agents' calls go on between the steps.
M.PAGES_PER_STEP = 64

-- Copy db into the new file path (created 0600; an existing file is never
-- overwritten). Returns { pages = n, steps = k } or nil, err; on an error
-- no partial file is left. The caller writes its anchor (write_anchor).
function M.online(db, path, pages)
  if db_mod.is_pg(db) then
    return nil, "the store is PostgreSQL: back it up with pg_dump (README: Backups), not admin backup"
  end
  if exists(path .. ".head") then
    return nil, ("%s.head exists already (a backup never overwrites a file)"):format(path)
  end
  local b <close>, err = db:backup(path)
  if not b then return nil, err end
  local steps = 0
  while true do
    local done, remaining, total = b:step(pages or M.PAGES_PER_STEP)
    steps = steps + 1
    if done == nil then return nil, remaining end
    if done then return { pages = total, steps = steps } end
    loop.sleep(0)
  end
end

-- The anchor of a database's audit trail as it ends: { id, count, head, legacy }.
local function tail_anchor(db)
  local last = audit_store.last(db)
  local plain = audit_store.count_of_chain(db, audit.PLAIN)
  local id = last and last.id or 0
  return { id = id, count = id, head = last and last.hash or audit.GENESIS, legacy = plain or 0 }
end

-- The backup's own anchor, FILE.head (mode 0600), written by the server
-- once the copy is complete: restore holds the backup's trail against it,
-- so a backup whose tail was cut afterwards is refused.
function M.write_anchor(path, master)
  local db, err = store.open(path)
  if not db then return nil, err end
  local a = tail_anchor(db)
  db:close()
  local vault = require("core.vault")
  local ok, werr = vault.write_private(path .. ".head", audit.anchor_text(master, a))
  if not ok then return nil, werr end
  return a
end

-- Copy the file src to the new file dst, created 0600.
local function copy_private(src, dst)
  local fs = require("core.fs")
  local inf, err = io.open(src, "rb")
  if not inf then return nil, err end
  local old = fs.umask(tonumber("077", 8))
  local out, oerr = io.open(dst, "wb")
  fs.umask(old)
  if not out then inf:close() return nil, oerr end
  local ok, werr = true, nil
  while true do
    local chunk = inf:read(1048576)
    if not chunk then break end
    ok, werr = out:write(chunk)
    if not ok then break end
  end
  inf:close()
  local cok, cerr = out:close()
  if not ok then return nil, werr end
  if not cok then return nil, cerr end
  return true
end

-- The checks a backup must pass, on the copy: a Switchboard database, of a
-- schema version this runtime knows, intact, and an audit chain that
-- verifies with master. Returns { version, records } or nil, why.
local function check_copy(path, file, master, scratch_anchor)
  local db, err = store.open(path)
  if not db then return nil, ("%s is not a readable SQLite database: %s"):format(file, err) end
  local function fail(why) db:close() return nil, why end
  local qc = backup_store.integrity(db)
  if not qc then return fail(("%s is not a database (or is damaged)"):format(file)) end
  if qc ~= "ok" then
    return fail(("%s is damaged: %s"):format(file, tostring(qc)))
  end
  local version = db:user_version()
  local tables = backup_store.has_tables(db, { "tenants", "agents", "audit_log" })
  if version == 0 or not tables then
    return fail(("%s is not a Switchboard database (no schema version or tables of one)"):format(file))
  end
  if version > #db_mod.migrations then
    return fail(("%s has schema version %d, newer than this runtime's %d: restore it with a newer"
      .. " switchboard"):format(file, version, #db_mod.migrations))
  end
  -- the chain, held against the backup's own anchor (FILE.head) when it
  -- came with one, else against one made for its last record
  local anchor, note = file .. ".head", nil
  if not exists(anchor) then
    anchor = scratch_anchor
    note = ("no anchor came with the backup (%s.head): its records verify, but that none was cut from"
      .. " its end cannot be shown"):format(file)
    local vault = require("core.vault")
    local ok, werr = vault.write_private(scratch_anchor, audit.anchor_text(master, tail_anchor(db)))
    if not ok then return fail("cannot write a scratch anchor: " .. tostring(werr)) end
  end
  local r = audit.verify_trail(db, master, anchor)
  os.remove(scratch_anchor)
  if not r.ok then
    return fail(("%s: its audit trail does not verify with this master key and its anchor: %s"):format(file,
      r.problem))
  end
  db:close()
  return { version = version, records = r.records, note = note }
end

-- Restore the backup file over cfg.database; the server must be stopped.
-- The database it replaces (and its -wal, -shm) is kept as
-- <database>.before-restore-<time>, the anchor as
-- <anchor_file>.before-restore-<time>; then the audit trail is opened on
-- the restored database: an anchor that reaches further (records written
-- after the backup) is recorded in the trail as a re-anchoring with the
-- records it lost, and the restore itself as a settings change.
-- open_master(cfg) opens the key. Returns a summary or nil, err.
function M.restore(cfg, file, open_master, actor)
  if lfs.attributes(file, "mode") ~= "file" then
    return nil, ("%s: no such file"):format(file)
  end
  if cfg.store and cfg.store.kind == "pg" then
    return nil, "the store is PostgreSQL: restore it with pg_restore (README: Backups), not switchboard restore"
  end
  local database = cfg.database
  if exists(database) then
    local unused, why = store.unused(database)
    if unused == false then
      return nil, ("the database %s is in use (%s): stop the server first"):format(database, why)
    elseif unused == nil then
      return nil, ("database %s: %s"):format(database, why)
    end
  end
  local dir = database:match("^(.*)/[^/]*$") or "."
  if not exists(dir) then
    local server = require("switchboard.server")
    local ok, err = server.private_dir(dir)
    if not ok then return nil, err end
  end
  local master, merr = open_master(cfg)
  if not master then return nil, merr end
  local copy = database .. ".restoring~"
  for _, p in ipairs({ copy, copy .. "-wal", copy .. "-shm" }) do os.remove(p) end
  local ok, err = copy_private(file, copy)
  if not ok then master:close() return nil, ("cannot copy %s: %s"):format(file, err) end
  local info, cerr = check_copy(copy, file, master, cfg.audit.anchor_file .. ".restoring~")
  if not info then
    for _, p in ipairs({ copy, copy .. "-wal", copy .. "-shm" }) do os.remove(p) end
    master:close()
    return nil, cerr
  end
  local stamp = os.date("!%Y%m%dT%H%M%SZ")
  local kept = {}
  for _, suffix in ipairs({ "", "-wal", "-shm" }) do
    if exists(database .. suffix) then
      local aside = ("%s.before-restore-%s%s"):format(database, stamp, suffix)
      ok, err = os.rename(database .. suffix, aside)
      if not ok then master:close() return nil, err end
      if suffix == "" then kept.database = aside end
    end
  end
  local anchor = cfg.audit.anchor_file
  if exists(anchor) then
    kept.anchor = ("%s.before-restore-%s"):format(anchor, stamp)
    ok, err = copy_private(anchor, kept.anchor)
    if not ok then master:close() return nil, ("cannot keep the anchor %s: %s"):format(anchor, err) end
  end
  ok, err = os.rename(copy, database)
  if not ok then master:close() return nil, err end
  -- open it as the server does: migrations, then the audit writer, which
  -- holds the restored trail against the anchor
  local db, derr = db_mod.open(database)
  if not db then master:close() return nil, derr end
  local trail = audit.new(db, master, cfg.audit)
  trail:setting(nil, actor or "restore", "database.restore",
    { database = kept.database or false, anchor = kept.anchor or false },
    { from = file, records = info.records, schema_version = info.version })
  trail:flush()
  local v = trail:verify()
  db:close()
  master:close()
  if not v.ok then return nil, "the restored audit trail does not verify: " .. v.problem end
  local warnings = v.warnings or {}
  if info.note then table.insert(warnings, 1, info.note) end
  return { database = database, records = info.records, schema_version = info.version,
           kept_database = kept.database, kept_anchor = kept.anchor, warnings = warnings }
end

return M
