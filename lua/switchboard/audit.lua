-- The audit trail: one record per tools/call, whatever its end, and one
-- per settings change, in one chained table, keyed and anchored:
--   mac_n = HMAC-SHA256(audit_key, "switchboard audit v1\n" mac_{n-1} "\n"
--                       canonical(record_n))
-- The audit key is derived from the master key in C (master:audit_mac) and
-- never reaches Lua, so whoever can write the database but lacks the key
-- cannot edit, insert, reorder or append a record that verifies. After
-- each committed batch the chain's head (last id, count, MAC, MAC'd
-- itself) is written to the anchor file, outside the database, so a
-- deletion of the tail, or of everything, is found too.
--
-- Records written before the chain was keyed (chain = 0) keep their plain
-- SHA-256 hash and are verified as before; the anchor says where they end
-- and the first keyed record binds their last hash.
--
-- Call records are queued and committed together a few milliseconds
-- later (group commit), so the fsync of synchronous=FULL is paid once per
-- batch; shutdown flushes what is queued. There is one writer per
-- database, so the chain has one order.
local loop = require("core.loop")
local vault = require("core.vault")
local chain = require("core.auditchain")
local json = require("switchboard.json")
local log = require("switchboard.log")
local db_mod = require("switchboard.db")
local store = require("switchboard.store.audit")
local time = require("switchboard.time")

local M = {}
M.__index = M

M.GENESIS = string.rep("0", 64)

local SECRET_KEY = { secret = true, token = true, password = true, auth_token = true,
                     api_key_secret = true, authorization = true, code = true }
local BODY_KEY = { body = true, template_variables = true }

-- Parameters as stored: secrets removed, bodies per the configured mode.
-- texts: more top-level argument names kept as bodies are (the texts a
-- tool's `sends` declares, such as an email's subject).
function M.scrub(args, bodies, texts)
  local out = {}
  for k, v in pairs(args or {}) do
    local key = tostring(k):lower()
    if SECRET_KEY[key] then
      out[k] = "[removed]"
    elseif BODY_KEY[key] or (texts and texts[k]) then
      local text = type(v) == "string" and v or json.encode(v)
      if bodies == "full" then
        out[k] = v
      elseif bodies == "hash" then
        out[k] = "sha256:" .. vault.sha256_hex(text)
      else
        out[k] = ("[%d characters]"):format(utf8.len(text) or #text)
      end
    elseif type(v) == "table" then
      out[k] = M.scrub(v, bodies)
    else
      out[k] = v
    end
  end
  return out
end

local COLUMNS = { "id", "at", "kind", "tenant_id", "agent_id", "actor", "execution_id", "sender_tier",
                  "tool", "action", "params", "decision", "policies", "outcome", "detail", "retries",
                  "duration_ms" }

M.PLAIN, M.KEYED = 0, 1

-- The canonical form of a record before the chain was keyed (chain 0):
-- its columns in a fixed order, as a JSON array, floats with three
-- decimals. Kept to verify those records as they were written.
local canon_codec = require("cjson").new()
function M.plain_canonical(r)
  local parts = {}
  for i, c in ipairs(COLUMNS) do
    local v = r[c]
    if v == nil then
      v = json.null
    elseif math.type(v) == "float" then
      v = ("%.3f"):format(v)
    end
    parts[i] = v
  end
  return canon_codec.encode(parts)
end

function M.plain_hash(prev, r)
  return vault.sha256_hex(prev .. "\n" .. M.plain_canonical(r))
end

-- A value as it is MAC'd: typed and exact (an integer in decimal, a float
-- in hex-float notation, every bit of it), so no change below a printed
-- precision and no change of type goes unseen.
local function exact(v)
  if v == nil then return json.null end
  local t = math.type(v)
  if t == "integer" then return "i:" .. v end
  if t == "float" then return ("f:%a"):format(v) end
  if type(v) == "string" then return "s:" .. v end
  error("audit: a record cannot hold a " .. type(v))
end

-- The canonical form of a keyed record: every column, its chain version
-- and its anchor claim, as a JSON array of exact values.
function M.canonical(r)
  local parts = {}
  for i, c in ipairs(COLUMNS) do parts[i] = exact(r[c]) end
  parts[#COLUMNS + 1] = exact(r.chain)
  parts[#COLUMNS + 2] = exact(r.anchored)
  return canon_codec.encode(parts)
end

function M.mac(master, prev, r)
  return master:audit_mac("switchboard audit v1\n" .. prev .. "\n" .. M.canonical(r))
end

-- {======================================================
-- The anchor file:
--   switchboard audit anchor v1
--   id <last id> / count <records> / head <its MAC> / legacy <last unkeyed id>
--   mac <HMAC of the lines above>
-- =======================================================

local ANCHOR_HEAD = "switchboard audit anchor v1\n"

local function anchor_body(a)
  return ANCHOR_HEAD .. ("id %d\ncount %d\nhead %s\nlegacy %d\n"):format(a.id, a.count, a.head, a.legacy)
end

function M.anchor_text(master, a)
  local body = anchor_body(a)
  return body .. "mac " .. master:audit_mac(body) .. "\n"
end

local function whole(s)
  return #s <= 18 and math.tointeger(tonumber(s)) or nil
end

-- The anchor at path: a table, or nil, "missing" | "invalid", why.
function M.read_anchor(master, path)
  local f, err, code = io.open(path, "rb")
  if not f then
    if code == 2 then return nil, "missing", "is missing" end
    return nil, "invalid", ("cannot be read (%s)"):format(err)
  end
  local s = f:read(4096) or ""
  f:close()
  local id, count, head, legacy, mac = s:match("^switchboard audit anchor v1\nid (%d+)\ncount (%d+)\n"
    .. "head (%x+)\nlegacy (%d+)\nmac (%x+)\n$")
  local a = id and { id = whole(id), count = whole(count), head = head, legacy = whole(legacy) }
  if not (a and a.id and a.count and a.legacy) then
    return nil, "invalid", "is not an audit anchor"
  end
  if not vault.equal(master:audit_mac(anchor_body(a)), mac) then
    return nil, "invalid", "does not verify: it was edited or written without the master key"
  end
  return a
end

-- }======================================================

local writers = setmetatable({}, { __mode = "k" })

-- Why the trail's tail does not match the anchor a, or nil.
local function tail_problem(db, a, last)
  local last_id = last and last.id or 0
  if last_id < a.id then
    return ("the trail ends at record %d but its anchor reached record %d"):format(last_id, a.id)
  end
  local at = a.id > 0 and store.hash_at(db, a.id)
  if (at or M.GENESIS) ~= a.head then
    return ("record %d is not the record the anchor holds"):format(a.id)
  end
  if last and last.chain == M.KEYED and (last.anchored or 0) > a.id then
    return ("the anchor file is older than the trail: record %d was written when record %d was anchored,"
      .. " but the anchor reaches only record %d"):format(last.id, last.anchored, a.id)
  end
end

-- db: the store; master: core.vault.Master (the chain's key);
-- opts: { anchor_file (required), checkpoint_file (default anchor_file ..
-- ".verified"), flush_ms, anchor_ms, anchor_records, bodies }.
-- At start the anchor is checked against the trail's tail: records after it
-- (the last batch before a crash) are anchored; a tail that does not match
-- (deleted, rewritten, the anchor lost or replaced) is logged and
-- recorded in the trail itself (action audit.reanchor) before the chain is
-- anchored again from where it is.
M.ANCHOR_MS = 250        -- the anchor of call batches lags by at most this (ms)
M.ANCHOR_RECORDS = 1024  -- or by this many records

function M.new(db, master, opts)
  opts = opts or {}
  assert(master and master.audit_mac, "audit.new: the master key is required")
  assert(type(opts.anchor_file) == "string", "audit.new: opts.anchor_file is required")
  local self = setmetatable({ db = db, master = master, anchor_file = opts.anchor_file, queue = {},
                              checkpoint_file = opts.checkpoint_file or (opts.anchor_file .. ".verified"),
                              flush_ms = opts.flush_ms or 20, bodies = opts.bodies or "redacted",
                              anchor_ms = opts.anchor_ms or M.ANCHOR_MS,
                              anchor_records = opts.anchor_records or M.ANCHOR_RECORDS,
                              scheduled = false, anchored_id = 0, legacy = 0 }, M)
  local last = store.last(db)
  self.last_id, self.last_hash = last and last.id or 0, last and last.hash or M.GENESIS
  local a, kind, why = M.read_anchor(master, self.anchor_file)
  local problem
  if a then
    self.legacy, self.anchored_id = a.legacy, math.min(a.id, self.last_id)
    problem = tail_problem(db, a, last)
    if not problem and self.last_id > a.id then
      log.info("audit: %d records after the anchor (the last batch before the previous stop) are anchored now",
        self.last_id - a.id)
    end
  elseif kind == "missing" and not store.other_chain(db, M.PLAIN) then
    -- a new trail, or one written before the chain was keyed
    self.legacy = self.last_id
    if self.legacy > 0 then
      log.warn("audit: the %d records written before the audit chain was keyed keep their plain SHA-256"
        .. " chain; they are anchored now (%s) and verified as before", self.legacy, self.anchor_file)
    end
  else
    problem = ("the anchor file %s %s"):format(self.anchor_file, why)
    self.legacy = store.last_of_chain(db, M.PLAIN) or 0
  end
  writers[db] = self
  if problem then
    log.error("audit: %s; the trail is anchored again from record %d and this is recorded in it"
      .. " (audit verify lists it)", problem, self.last_id)
    self.queue[1] = {
      at = M.now(), kind = "setting", actor = "switchboard", action = "audit.reanchor", outcome = "ok",
      params = json.encode({ old = a and { id = a.id, count = a.count, head = a.head } or json.null,
                             new = { problem = problem, records = self.last_id } }),
    }
    self.anchored_id = 0
  end
  self:flush()
  self:write_anchor()
  return self
end

-- The writer of a database (settings changes are written through it).
function M.for_db(db)
  return writers[db] or error("audit: no writer was opened for this database", 2)
end

-- Write the anchor for the chain's head; on failure the records stay
-- unanchored (they still verify by MAC) and it is tried again. A record
-- claims only an anchor that was written (fsynced and renamed), so an
-- anchor that lags never looks like an older copy.
function M:write_anchor()
  if self.anchored_id == self.last_id and self.anchor_written then return true end
  local text = M.anchor_text(self.master, { id = self.last_id, count = self.last_id, head = self.last_hash,
                                            legacy = self.legacy })
  local ok, err = vault.write_private(self.anchor_file, text)
  if not ok then
    log.error("audit: cannot write the anchor (records up to %d are committed but not anchored yet;"
      .. " retrying): %s", self.last_id, err)
    self:schedule(1000)
    return nil, err
  end
  self.anchored_id, self.anchor_written = self.last_id, true
  if self.anchor_timer then self.anchor_timer:close() self.anchor_timer = nil end
  return true
end

-- The anchor of batches committed on a call's path is written later, off
-- the call's path: at most every anchor_ms (the batches committed meanwhile
-- share one write, two fsyncs), or on the next loop turn once
-- anchor_records records wait for it. Records committed and not anchored
-- yet when the process dies are what verify reports as "not yet anchored"
-- and the next start anchors; a stop (flush without defer) anchors them.
-- With flush_ms = 0 (no group commit) each batch is anchored on the next
-- loop turn, as is a writer's backlog of anchor_records.
function M:schedule_anchor()
  if self.flush_ms == 0 or self.last_id - self.anchored_id >= self.anchor_records then
    if self.anchor_soon then return end
    self.anchor_soon = true
    loop.spawn(function()
      loop.sleep(0)
      self.anchor_soon = false
      if writers[self.db] == self then self:write_anchor() end
    end)
    return
  end
  if self.anchor_timer then return end
  -- a timer, stopped when the anchor is written sooner (a verify, a stop)
  self.anchor_timer = loop.timer(self.anchor_ms / 1000, 0, function()
    if self.anchor_timer then self.anchor_timer:close() self.anchor_timer = nil end
    -- a writer opened on the database since owns its anchor
    if writers[self.db] == self then self:write_anchor() end
  end)
end

-- Commit what is queued, then write the anchor (now, or on the next loop
-- turn when defer_anchor).
function M:flush(defer_anchor)
  local q = self.queue
  if #q == 0 then
    if self.anchored_id ~= self.last_id then
      if defer_anchor then self:schedule_anchor() return true end
      return self:write_anchor()
    end
    return true
  end
  self.queue = {}
  local db = self.db
  -- the sends' writes queued before these records go first (a record never
  -- reports an outcome its send record does not hold yet); one transaction
  -- at a time, through the db module
  db_mod.writer(db):flush()
  local id, prev = self.last_id, self.last_hash
  local pg = db_mod.is_pg(db)
  local ok, err = db_mod.transaction(db, function()
    if pg then
      -- several nodes append to one chain: one at a time (the chain's lock,
      -- to the COMMIT), each after the head as the database has it
      local last, lerr = store.lock_chain(db)
      if last == nil then return nil, lerr end
      id, prev = last and last.id or 0, last and last.hash or M.GENESIS
    end
    for _, r in ipairs(q) do
      id = id + 1
      -- (PostgreSQL: each node has an anchor file of its own, so a record
      -- claims none: what one node anchored says nothing of another's file)
      r.id, r.chain, r.anchored = id, M.KEYED, pg and 0 or self.anchored_id
      local h = M.mac(self.master, prev, r)
      r.prev_hash, r.hash = prev, h
      local stored, serr = store.append(db, r)
      if not stored then return nil, serr end
      prev = h
    end
    return true
  end)
  if not ok then
    -- keep them, in order, ahead of what came since, and try again soon
    for i = 1, #self.queue do q[#q + 1] = self.queue[i] end
    self.queue = q
    log.error("audit: could not write %d records (kept, retrying): %s", #q, tostring(err))
    self:schedule(1000)
    return nil, err
  end
  self.last_id, self.last_hash = id, prev
  if defer_anchor then self:schedule_anchor() else self:write_anchor() end
  return true
end

function M:schedule(delay_ms)
  if self.scheduled then return end
  self.scheduled = true
  loop.spawn(function()
    loop.sleep(delay_ms / 1000)
    self.scheduled = false
    self:flush(true)
  end)
end

-- The time stamp, formatted once a second.
local last_sec, last_str = -1, nil
function M.now()
  local t = time.unix()
  if t ~= last_sec then last_sec, last_str = t, time.iso(t) end
  return last_str
end

-- rec: { tenant_id, agent_id, execution_id, sender_tier, tool, action,
--        args, texts (argument names scrubbed as bodies), decision,
--        policies = {…}, outcome, detail, retries, duration_ms }
function M:record(rec)
  self.queue[#self.queue + 1] = {
    at = M.now(), kind = "call", tenant_id = rec.tenant_id, agent_id = rec.agent_id,
    actor = rec.actor, execution_id = rec.execution_id, sender_tier = rec.sender_tier, tool = rec.tool,
    action = rec.action, params = next(rec.args or {}) == nil and "{}" or json.encode(M.scrub(rec.args, self.bodies, rec.texts)),
    decision = rec.decision, policies = #rec.policies == 0 and "[]" or json.encode(rec.policies),
    outcome = rec.outcome, detail = rec.detail and json.encode(rec.detail) or nil,
    retries = rec.retries or 0,
    duration_ms = math.floor((rec.duration_ms or 0) * 1000 + 0.5) / 1000,
  }
  if self.flush_ms == 0 then return self:flush(true) end
  self:schedule(self.flush_ms)
  return true
end

-- A settings change: who, what, old and new value. Written on the next
-- loop turn (after the caller's transaction, if any).
function M:setting(tenant_id, actor, action, old, new)
  self.queue[#self.queue + 1] = {
    at = M.now(), kind = "setting", tenant_id = tenant_id, actor = actor or "unknown", action = action,
    params = json.encode({ old = old == nil and json.null or old, new = new == nil and json.null or new }),
    outcome = "ok",
  }
  self:schedule(0)
  return true
end

local function broken(id, records, problem, ...)
  return { ok = false, id = id, records = records, problem = problem:format(...) }
end

-- {======================================================
-- The verified checkpoint (next to the anchor, `<anchor>.verified`):
--   switchboard audit checkpoint v1
--   id <last verified id> / head <its MAC> / legacy <unkeyed records up to it>
--   keyed 0|1 / claim <highest anchor claim> / claim_by <its record>
--   warnings <JSON array of the reanchor warnings up to it>
--   mac <HMAC of the lines above>
-- The walk state after record `id`, MAC'd with the audit key: whoever lacks
-- the master key cannot move it, or make it skip a record.
-- =======================================================

local CP_HEAD = "switchboard audit checkpoint v1\n"

local function checkpoint_body(c)
  return CP_HEAD .. ("id %d\nhead %s\nlegacy %d\nkeyed %d\nclaim %d\nclaim_by %d\nwarnings %s\n"):format(
    c.id, c.head, c.legacy, c.keyed and 1 or 0, c.claim, c.claim_by or 0, json.encode(json.array(c.warnings)))
end

function M.checkpoint_text(master, c)
  local body = checkpoint_body(c)
  return body .. "mac " .. master:audit_mac(body) .. "\n"
end

-- The checkpoint at path: a table, or nil, "missing" | "invalid", why.
function M.read_checkpoint(master, path)
  local f, err, code = io.open(path, "rb")
  if not f then
    if code == 2 then return nil, "missing", "is missing" end
    return nil, "invalid", ("cannot be read (%s)"):format(err)
  end
  local s = f:read(1048576) or ""
  f:close()
  local id, head, legacy, keyed, claim, claim_by, warnings, mac = s:match("^switchboard audit checkpoint v1\n"
    .. "id (%d+)\nhead (%x+)\nlegacy (%d+)\nkeyed ([01])\nclaim (%d+)\nclaim_by (%d+)\nwarnings (%[[^\n]*%])\n"
    .. "mac (%x+)\n$")
  local w = warnings and json.decode(warnings)
  local c = id and type(w) == "table" and { id = whole(id), head = head, legacy = whole(legacy), keyed = keyed == "1",
                                            claim = whole(claim), claim_by = whole(claim_by), warnings = w }
  if not (c and c.id and c.legacy and c.claim and c.claim_by) then return nil, "invalid", "is not a checkpoint" end
  if c.claim_by == 0 then c.claim_by = nil end
  if not vault.equal(master:audit_mac(checkpoint_body(c)), mac) then
    return nil, "invalid", "does not verify: it was edited or written without the master key"
  end
  return c
end

-- }======================================================

M.BATCH = 256      -- records read per statement (and per slice when yielding)
M.SLICE = 0.001    -- seconds: a slice within a batch that runs longer yields
-- Intact keyed records are passed over by core.auditchain (SQLite), the
-- same checks in C; any other record is checked here. false: all here.
M.FAST = true

-- Walk the chain and hold it against the anchor, in batches of M.BATCH
-- records (bounded memory); on SQLite the intact keyed records are passed
-- over by core.auditchain in slices of M.SLICE seconds (docs/core-api.md),
-- and every other record is checked here. master: the chain's key; anchor_file: its
-- anchor; written_id (optional): how far the running writer last anchored.
-- opts (optional):
--   checkpoint: a checkpoint file; unless full, the walk starts after the
--     record it names (that record's MAC, the first record and the anchor
--     are checked again), and a walk that ends intact moves it to the end;
--   full: walk from record 1 (the checkpoint is still written);
--   yield: called between batches, and within one every M.SLICE seconds
--     (the server passes a loop sleep(0));
--   progress: progress(checked, total) after each batch;
--   checkpoint_later: the checkpoint's new text is returned second, for
--     the caller to write (M:verify writes it after the answer).
-- Returns
--   { ok = true, records = n, anchored = id, unanchored = n - id, legacy = m, warnings = {…},
--     notes = {…}, checked = records walked now, from = the checkpoint's id or 0 }
-- (notes: why the walk started from record 1 although a checkpoint was
-- given, or why it could not be moved)
-- (unanchored: records after the anchor, which verify by MAC: the last
-- batch before a crash) or { ok = false, id = n?, records = k, problem = "…" }
-- for the first problem found.
function M.verify_trail(db, master, anchor_file, written_id, opts)
  opts = opts or {}
  local a, _, why = M.read_anchor(master, anchor_file)
  local top, terr = store.top_id(db)
  if terr then error("audit: the trail cannot be read: " .. tostring(terr)) end
  top = top or 0
  local prev, n, legacy, keyed, claim, claim_by = M.GENESIS, 0, 0, false, 0, nil
  local warnings, notes = {}, {}
  if opts.checkpoint and not opts.full then
    local c, kind, cwhy = M.read_checkpoint(master, opts.checkpoint)
    local r = c and c.id <= top and store.record(db, c.id)
    local first = c and store.first_id(db)
    if c and not (r and r.hash == c.head and first == 1
        and ((r.chain == M.KEYED and vault.equal(M.mac(master, r.prev_hash, r), r.hash))
          or (r.chain == M.PLAIN and M.plain_hash(r.prev_hash, r) == r.hash))) then
      -- the trail changed below the checkpoint: the full walk says how
      notes[#notes + 1] = ("record %d, where the last verify ended, was changed or deleted since (or record 1"
        .. " was); the trail was walked in full"):format(c.id)
    elseif c then
      prev, n, legacy, keyed, claim, claim_by = c.head, c.id, c.legacy, c.keyed, c.claim, c.claim_by
      for i, w in ipairs(c.warnings) do warnings[i] = w end
    elseif kind == "invalid" then
      notes[#notes + 1] = ("the verify checkpoint %s %s; the trail was walked in full"):format(opts.checkpoint, cwhy)
    end
  end
  local from, total = n, top - n
  local yield, slice_at = opts.yield, loop.time()
  local fast = M.FAST and not db_mod.is_pg(db)
  while n < top do
    local batch = M.BATCH
    if fast then
      -- the intact keyed records, in C, a slice at a time; the record it
      -- stops before (if any) is checked below, with the records after it
      -- when it passed none (the unkeyed records of earlier versions)
      local m, head, c, by, timed = chain.walk(db, master, n, top, prev, M.SLICE)
      if not m then error("audit: the trail cannot be read: " .. tostring(head)) end
      batch = m > n and 1 or M.BATCH
      if m > n then
        keyed, n, prev = true, m, head
        if c > claim then claim, claim_by = c, by end
        if opts.progress then opts.progress(n - from, total) end
      end
      if timed then
        if yield then yield() slice_at = loop.time() end
        goto continue
      end
      if n >= top then break end
    end
    local rows = assert(store.records(db, n, top, batch))
    if #rows == 0 then break end
    for _, r in ipairs(rows) do
      n = n + 1
      local k = n - 1
      if r.id ~= n then
        if r.id == n + 1 then
          return broken(n, k, "record %d is missing (deleted): the next record is %d", n, r.id)
        end
        return broken(n, k, "records %d to %d are missing (deleted): the next record is %d", n, r.id - 1, r.id)
      end
      if r.prev_hash ~= prev then
        return broken(r.id, k, "record %d does not follow the record before it (a record was deleted, inserted"
          .. " or reordered)", r.id)
      end
      if r.chain == M.PLAIN then
        if keyed or (a and r.id > a.legacy) then
          return broken(r.id, k, "record %d carries the unkeyed hash of earlier versions where the chain is keyed"
            .. " (%s): it was rewritten without the key", r.id,
            keyed and "after keyed records" or ("the unkeyed part ends at record " .. a.legacy))
        end
        if M.plain_hash(prev, r) ~= r.hash then
          return broken(r.id, k, "record %d was changed after it was written", r.id)
        end
        legacy = legacy + 1
      elseif r.chain == M.KEYED then
        keyed = true
        if type(r.hash) ~= "string" or not vault.equal(M.mac(master, prev, r), r.hash)
            or math.type(r.anchored) ~= "integer" or r.anchored < 0 or r.anchored >= r.id then
          return broken(r.id, k, "record %d was changed after it was written, or written without the key"
            .. " (its MAC does not match)", r.id)
        end
        if r.anchored > claim then claim, claim_by = r.anchored, r.id end
        if r.kind == "setting" and r.action == "audit.reanchor" then
          local p = json.decode(r.params or "") or {}
          warnings[#warnings + 1] = ("record %d (%s): at start the trail did not match its anchor: %s;"
            .. " it was anchored again from there"):format(r.id, tostring(r.at),
            tostring(type(p.new) == "table" and p.new.problem))
        end
      else
        return broken(r.id, k, "record %d has an unknown chain version (%s)", r.id, tostring(r.chain))
      end
      prev = r.hash
      -- a slice of a batch that takes long on a busy machine yields too
      if yield and n % 32 == 0 and loop.time() - slice_at > M.SLICE then
        yield()
        slice_at = loop.time()
      end
    end
    if opts.progress then opts.progress(n - from, total) end
    if yield and n < top and (batch > 1 or loop.time() - slice_at > M.SLICE) then
      yield()
      slice_at = loop.time()
    end
    ::continue::
  end
  if not a then
    return broken(nil, n, "the anchor file %s %s, so the trail cannot be shown complete (its tail, or all of"
      .. " it, may have been deleted)", anchor_file, why)
  end
  if n < a.id then
    return broken(n + 1, n, "the trail ends at record %d but its anchor reached record %d: records %d to %d"
      .. " were deleted", n, a.id, n + 1, a.id)
  end
  local head_at = a.id > 0 and store.hash_at(db, a.id)
  if (head_at or M.GENESIS) ~= a.head or a.count ~= a.id then
    return broken(a.id, n, "record %d is not the record the anchor holds: the trail was rewritten from there",
      a.id)
  end
  if legacy ~= a.legacy then
    return broken(nil, n, "the anchor marks records 1 to %d as written before the chain was keyed, but the"
      .. " trail has %d such records", a.legacy, legacy)
  end
  if claim > a.id then
    return broken(nil, n, "the anchor file is older than the trail: record %d was written when record %d was"
      .. " anchored, but the anchor reaches only record %d (it was replaced by an older copy)",
      claim_by, claim, a.id)
  end
  if written_id and written_id > a.id then
    return broken(nil, n, "the anchor file is older than what this server last wrote (record %d): it reaches"
      .. " only record %d (it was replaced by an older copy)", written_id, a.id)
  end
  local later
  if opts.checkpoint and n > 0 then
    local text = M.checkpoint_text(master, { id = n, head = prev, legacy = legacy, keyed = keyed, claim = claim,
                                             claim_by = claim_by, warnings = warnings })
    if opts.checkpoint_later then
      later = text
    else
      local ok, err = vault.write_private(opts.checkpoint, text)
      if not ok then notes[#notes + 1] = "the verify checkpoint could not be written: " .. tostring(err) end
    end
  end
  return { ok = true, records = n, anchored = a.id, unanchored = n - a.id, legacy = legacy,
           warnings = warnings, notes = notes, last_hash = prev, checked = n - from, from = from },
         later
end

-- Verify this writer's trail (after committing what is queued); one at a
-- time. opts: { incremental = from the checkpoint, yield, progress } (as
-- verify_trail; checkpoint_later: the moved checkpoint is written on the
-- next loop turn, after the answer (its two fsyncs spare only the next verify's
-- walk: a checkpoint lost in a crash is an older one, or a full walk).
-- Returns the result, or nil, why when a verify is running.
function M:verify(opts)
  opts = opts or {}
  if self.verifying then return nil, "a verify of the audit trail is running already; try again when it ends" end
  self.verifying = true
  self:flush()
  local ok, res, later = pcall(M.verify_trail, self.db, self.master, self.anchor_file,
    self.anchor_written and self.anchored_id or nil,
    { checkpoint = self.checkpoint_file, full = not opts.incremental, yield = opts.yield, progress = opts.progress,
      checkpoint_later = opts.checkpoint_later })
  self.verifying = false
  if not ok then error(res, 0) end
  if later then
    local path = self.checkpoint_file
    loop.spawn(function()
      loop.sleep(0)
      local wok, err = vault.write_private(path, later)
      if not wok then log.error("audit: the verify checkpoint could not be written: %s", tostring(err)) end
    end)
  end
  return res
end

return M
