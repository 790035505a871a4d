-- An in-process runtime for the fuzz targets: the server object serve
-- builds (store, vault, tools, policies, audit, admin) on a temporary data
-- directory, without sockets or signals, with one tenant "acme", its
-- agent "bot" (token rt.token) and an active Twilio connection. core.http
-- is replaced by a function the target gives: nothing leaves the process.
local lfs = require("lfs")
local loop = require("core.loop")
local vault = require("core.vault")
local http = require("core.http")
local config = require("switchboard.config")
local db_mod = require("switchboard.db")
local audit = require("switchboard.audit")
local directory = require("switchboard.directory")
local server = require("switchboard.server")
local conn_mod = require("integrations.twilio.connection")
local sends = require("switchboard.sends")

-- an unknown outcome is reconciled minutes later: not in a fuzz run
sends.reconcile_later = function() end

local M = {}

M.ACCOUNT = "AC" .. ("0123456789abcdef"):rep(2)
M.KEY = "SK" .. ("fedcba9876543210"):rep(2)
M.NUMBER = "+14155550100"
M.WHATSAPP = "+14155550101"
M.VERIFY = "VA" .. ("00112233445566778899aabbccddeeff")
M.SECRET = "fuzz-api-key-secret-0123456789abcdef"

-- Twilio is never reached: every request fails as a refused connection
-- unless the target sets its own responder.
local function unreachable()
  return nil, "could not connect to server (fuzz: no upstream)", { sent = false, code = 7 }
end

function M.set_http(fn)
  http.request = fn or unreachable
end

local function pid()
  local f = io.open("/proc/self/stat")
  local n = f and f:read("n")
  if f then f:close() end
  return math.tointeger(n) or 0
end

-- A new directory; the ones of processes that are gone (a crash leaves
-- its directory behind) are removed first.
local function tmpdir(tag)
  local base = lfs.attributes("/dev/shm", "mode") == "directory" and "/dev/shm" or (os.getenv("TMPDIR") or "/tmp")
  for f in lfs.dir(base) do
    local owner = f:match("^sbfuzz%-[%w_]+%-(%d+)%-%x+$")
    if owner and not lfs.attributes("/proc/" .. owner) then
      os.execute(("rm -rf '%s/%s'"):format(base, f))
    end
  end
  local dir = ("%s/sbfuzz-%s-%d-%s"):format(base, tag, pid(), vault.hex(vault.random(6)))
  assert(lfs.mkdir(dir))
  return dir
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  assert(f:write(s))
  f:close()
end

local RT = {}
RT.__index = RT

-- A new runtime. root: the project root.
function M.new(tag, root)
  M.set_http(nil)
  local dir = tmpdir(tag)
  local cfg = assert(config.build({
    data_dir = dir, agent_socket = dir .. "/agent.sock", admin_socket = dir .. "/admin.sock",
    master_key_file = dir .. "/master.key", audit = { flush_ms = 0 },
  }, root))
  local srv = setmetatable({ cfg = cfg, sessions = {}, nsessions = 0, nconn = 0, inflight = 0,
                             listeners = {}, signals = {} }, server)
  srv.master = assert(server.open_master(cfg))
  srv.db = assert(db_mod.open(cfg.database))
  -- calls run outside the event loop here: commit each write at once
  db_mod.writer(srv.db).sync = true
  assert(srv:load_code())
  local db = srv.db
  local t = assert(directory.add_tenant(db, srv.master, "acme"))
  assert(directory.set_features(db, t, { conn_mod.FEATURE }))
  assert(db:run("INSERT INTO tenant_groups (tenant_id, name, created_at) VALUES (?, ?, ?)",
    t.id, conn_mod.GROUP, db_mod.now()))
  local agent, token = assert(directory.add_agent(db, t, { name = "bot", type = "caioo", groups = { conn_mod.GROUP },
    default_tier = "owner", trusted_sender = true }))
  t = directory.tenant_by_id(db, t.id)
  local blob = directory.seal(srv.master, t, conn_mod.FIELD, M.SECRET)
  assert(require("switchboard.store.connections").insert(db, {
    tenant_id = t.id, integration = "twilio", key_id = M.KEY, secret = blob, status = "active",
    account_name = "Fuzz", autonomous_sends = true,
    settings = { account_sid = M.ACCOUNT, default_number = M.NUMBER, whatsapp_number = M.WHATSAPP,
                 verify_service_sid = M.VERIFY, account_status = "active", account_type = "Full",
                 numbers = { { phone_number = M.NUMBER, sms = true, mms = true, voice = true } } } }))
  srv.audit = audit.new(db, srv.master, cfg.audit)
  srv.admin = require("switchboard.admin").new(srv)
  local self = setmetatable({ dir = dir, server = srv, token = token, tenant = t, agent = agent }, RT)
  -- one held call (escalation 1): a card number in an SMS body
  local held = self:call("twilio_send_sms", { to = "+14155550123", body = "card 4111 1111 1111 1111" })
  assert(held.structuredContent and held.structuredContent.status == "held", "the seeded call was not held")
  assert(db:exec("PRAGMA wal_checkpoint(TRUNCATE)"))
  srv.audit:flush()
  self.template = read(cfg.database)
  self.anchor = read(cfg.audit.anchor_file)
  -- the directory goes when the Lua state closes
  self.sentinel = setmetatable({}, { __gc = function() self:remove() end })
  return self
end

-- The session fields pipeline.run reads, as initialize sets them.
function RT:session()
  local srv = self.server
  local agent = directory.authenticate(srv.db, self.token)
  return { tenant = { id = agent.tenant_id, name = agent.tenant_name, data_key = agent.tenant_data_key,
                      features = directory.decode_list(agent.tenant_features),
                      enabled = directory.tenant_groups(srv.db, agent.tenant_id) },
           agent = agent, version = "2025-11-25" }
end

-- A tools/call through the pipeline, as the agent "bot" (tier owner).
function RT:call(name, args)
  local srv = self.server
  return require("switchboard.pipeline").run(srv, { session = self:session(), tool = srv.registry.tools[name],
    args = args, id = 1, execution_id = "fuzz", sender = "owner", is_cancelled = function() return false end })
end

-- Run the event loop once over what is due now (a settings audit is
-- written from a coroutine scheduled after 0 ms), as the server would.
function RT.drain()
  local t = loop.timer(0, 0, function() loop.stop() end)
  loop.run()
  t:close()
end

-- Back to the state right after new (a fresh copy of the database).
function RT:restore()
  local srv = self.server
  srv.db:close()
  local path = srv.cfg.database
  os.remove(path .. "-wal")
  os.remove(path .. "-shm")
  write(path, self.template)
  write(srv.cfg.audit.anchor_file, self.anchor)
  srv.db = assert(db_mod.open(path))
  db_mod.writer(srv.db).sync = true
  srv.audit = audit.new(srv.db, srv.master, srv.cfg.audit)
  srv.admin = require("switchboard.admin").new(srv)
  srv.sessions, srv.nsessions, srv.inflight, srv.draining = {}, 0, 0, nil
end

function RT:remove()
  if self.removed then return end
  self.removed = true
  pcall(function() self.server.db:close() end)
  pcall(function() self.server.master:close() end)
  os.execute(("rm -rf '%s'"):format(self.dir))
end

-- A stream over the given lines, as core.loop's streams behave for the
-- code that reads them: read_line returns each line, then nil, "closed".
function M.stream(lines, line_bytes)
  local s = { out = {}, i = 0, is_closed = false }
  function s.read_line(self, max)
    if self.is_closed then return nil, "closed" end
    self.i = self.i + 1
    local l = lines[self.i]
    if l == nil then return nil, "closed" end
    if #l > (max or line_bytes or math.huge) then return nil, "line too long" end
    return (l:gsub("\r$", ""))
  end
  function s.write(self, data)
    if self.is_closed then return nil, "closed" end
    self.out[#self.out + 1] = data
    return true
  end
  function s.flush() return true end
  function s.close(self) self.is_closed = true end
  function s.closed(self) return self.is_closed end
  function s.peercred() return 4242, 0, 0 end
  function s.fd() return -1 end
  -- what was written, one entry per line
  function s.lines(self)
    local all = table.concat(self.out)
    local out = {}
    for l in all:gmatch("([^\n]*)\n") do out[#out + 1] = l end
    return out, all:sub(-1) == "\n" or all == ""
  end
  return s
end

-- Split bytes into lines (on \n).
function M.split(bytes)
  local lines = {}
  for l in (bytes .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  return lines
end

return M
