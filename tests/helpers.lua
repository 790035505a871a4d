-- Test helpers: run code on the runtime's loop, start real servers in
-- temporary directories, talk MCP and admin JSON-RPC over real sockets.
local loop = require("core.loop")
local json = require("switchboard.json")

local H = {}

H.BIN = os.getenv("SB_BIN") or "./switchboard"
H.ROOT = os.getenv("SB_ROOT") or "."
H.TMP = os.getenv("SB_TEST_TMP") or "/tmp"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end
H.sh = sh

function H.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function H.tmpdir(tag)
  return (sh("mktemp -d " .. H.q(H.TMP .. "/" .. (tag or "t") .. ".XXXXXX")):gsub("%s+$", ""))
end

function H.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function H.write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

function H.exists(path)
  return require("lfs").attributes(path) ~= nil
end

-- Run fn in a runtime coroutine until it returns; errors re-raise here.
function H.async(fn, timeout)
  local out
  local guard = loop.timer(timeout or 20, 0, function()
    if not out then out = { false, "test timed out", n = 2 } end
    loop.stop()
  end)
  loop.spawn(function()
    local r = table.pack(xpcall(fn, debug.traceback))
    if not out then out = r end
    loop.stop()
  end)
  if not out then loop.run() end
  guard:close()
  if not out[1] then error(out[2], 0) end
  return table.unpack(out, 2, out.n)
end

-- Blocking sleep outside the loop (setup code only).
function H.wait_for(pred, seconds, what)
  local deadline = os.time() + (seconds or 10)
  while not pred() do
    if os.time() > deadline then error("timed out waiting for " .. (what or "condition"), 2) end
    os.execute("sleep 0.02")
  end
end

-- The local upstream (tests/support/upstream.py); returns { port, url, stop }.
function H.upstream()
  local dir = H.tmpdir("up")
  local pf = dir .. "/port"
  local pid = sh(("python3 %s/tests/support/upstream.py %s >/dev/null 2>&1 & echo $!")
    :format(H.q(H.ROOT), H.q(pf))):gsub("%s+", "")
  H.wait_for(function() return H.exists(pf) end, 10, "the upstream")
  local port = tonumber(H.read(pf))
  return { port = port, url = "http://127.0.0.1:" .. port, pid = pid,
           stop = function() os.execute("kill " .. pid .. " 2>/dev/null") end }
end

local function lua_literal(v, indent)
  indent = indent or ""
  if type(v) == "table" then
    local parts = {}
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      local key = math.type(k) == "integer" and "" or ("[%q] = "):format(k)
      parts[#parts + 1] = indent .. "  " .. key .. lua_literal(v[k], indent .. "  ")
    end
    return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
  elseif type(v) == "string" then
    return ("%q"):format(v)
  end
  return tostring(v)
end

-- The store the integration suite runs on: "sqlite" (the default) or
-- "pg" (SB_STORE=pg; tests/run.sh starts one PostgreSQL for the run,
-- SB_PG_DIR, and each server gets a database of its own).
H.STORE = os.getenv("SB_STORE") == "pg" and "pg" or "sqlite"

-- The run's PostgreSQL (tests/support/postgres.lua), started here when
-- the run did not start one (stopped when the process exits).
local pg_server, pg_guard
function H.postgres()
  if pg_server then return pg_server end
  local postgres = require("support.postgres")
  pg_server = postgres.attach()
  if not pg_server then
    pg_server = postgres.start()
    local s = pg_server
    pg_guard = setmetatable({}, { __gc = function() s:stop() end })
  end
  H._pg_guard = pg_guard
  return pg_server
end

-- A new database on the run's PostgreSQL: the `store` setting of a config.
function H.pg_store(prefix)
  local s = H.postgres()
  return s:store_config(s:create_database(prefix or "srv"))
end

-- Run SQL on a server's store (checks and test setup, outside the loop):
-- the sqlite3 CLI on its file, or psql on its PostgreSQL database. H.sql
-- returns the text ("|" between columns) and the exit code; H.sql_rows the
-- rows, decoded from JSON (sqlite3 -json, or json_agg on PostgreSQL).
-- The PostgreSQL server of a store setting (the run's, or another a spec started).
local pg_attached = {}
local function pg_of(store)
  local s = H.postgres()
  if store.host == s.dir then return s end
  pg_attached[store.host] = pg_attached[store.host] or require("support.postgres").attach(store.host)
  return pg_attached[store.host]
end

function H.sql(srv, sql)
  local store = srv.cfg and srv.cfg.store
  if type(store) == "table" and store.dbname then
    return pg_of(store):psql_on(store.dbname, sql)
  end
  return sh(("sqlite3 %s %s 2>&1"):format(H.q(srv.dir .. "/data/switchboard.db"), H.q(sql)))
end

-- SQL's hex() of a BLOB column, in the server's store (uppercase, as SQLite's).
function H.hex_sql(srv, col)
  local store = srv.cfg and srv.cfg.store
  if type(store) == "table" and store.dbname then return ("upper(encode(%s, 'hex'))"):format(col) end
  return ("hex(%s)"):format(col)
end

-- A BLOB literal of hex digits in the server's store's SQL.
function H.blob_sql(srv, hex)
  local store = srv.cfg and srv.cfg.store
  if type(store) == "table" and store.dbname then return ("'\\x%s'::bytea"):format(hex) end
  return ("X'%s'"):format(hex)
end

-- The whole database as text (sqlite3 .dump, or pg_dump).
function H.dump(srv)
  local store = srv.cfg and srv.cfg.store
  if type(store) == "table" and store.dbname then return (pg_of(store):dump(store.dbname)) end
  return (sh(("sqlite3 %s .dump"):format(H.q(srv.dir .. "/data/switchboard.db"))))
end

function H.sql_rows(srv, sql)
  local store = srv.cfg and srv.cfg.store
  local out
  if type(store) == "table" and store.dbname then
    out = pg_of(store):psql_on(store.dbname, sql, true)
  else
    out = sh(("sqlite3 -json %s %s"):format(H.q(srv.dir .. "/data/switchboard.db"), H.q(sql)))
  end
  return json.decode(out) or {}
end

-- fn(db) on a connection of its own to a server's store (someone who can
-- write the database): core.store on the SQLite file, or a store.pg pool
-- on its PostgreSQL database, in a runtime coroutine. Errors re-raise.
function H.with_store(srv, fn)
  local store = srv.cfg and srv.cfg.store
  if type(store) == "table" and store.dbname then
    return H.async(function()
      local pool = require("switchboard.store.pg").new({
        conninfo = ("host=%s dbname=%s user=%s"):format(store.host, store.dbname, store.user),
        password_file = store.password_file, size = 1 })
      pool.dialect = "pg"
      local ok, err = pcall(fn, pool)
      pool:close()
      assert(ok, err)
    end, 60)
  end
  local db = assert(require("core.store").open(srv.dir .. "/data/switchboard.db"))
  local ok, err = pcall(fn, db)
  db:close()
  assert(ok, err)
end

-- Start `switchboard serve` with a config built from opts (merged over
-- the defaults below). Returns a handle. With SB_STORE=pg the server's
-- store is a new database (opts.store: a given one, to share it).
function H.server(opts)
  opts = opts or {}
  local dir = opts.dir or H.tmpdir("srv")
  local cfg = {
    data_dir = dir .. "/data", agent_socket = dir .. "/agent.sock", admin_socket = dir .. "/admin.sock",
    master_key_file = dir .. "/data/master.key", log = { level = "debug", file = dir .. "/server.log" },
    tool_dirs = { H.ROOT .. "/examples/tools" }, audit = { flush_ms = 0 },
    -- on PostgreSQL: a killed server's open sends are taken over soon
    cluster = { lease_seconds = 3 },
  }
  if opts.store then
    cfg.store = opts.store
  elseif H.STORE == "pg" and not (opts.config and opts.config.store) then
    -- a server started again in the same directory finds its database again
    H.pg_by_dir = H.pg_by_dir or {}
    cfg.store = H.pg_by_dir[dir] or H.pg_store()
    H.pg_by_dir[dir] = cfg.store
  end
  for k, v in pairs(opts.config or {}) do cfg[k] = v end
  local conf = dir .. "/switchboard.conf.lua"
  H.write(conf, "return " .. lua_literal(cfg) .. "\n")
  local self = { dir = dir, conf = conf, cfg = cfg, agent_socket = cfg.agent_socket,
                 admin_socket = cfg.admin_socket, log = cfg.log.file, stderr = dir .. "/stderr.log" }
  function self.start()
    -- a killed server leaves its socket files: wait for the new ones
    os.remove(self.agent_socket)
    os.remove(self.admin_socket)
    self.pid = sh(("exec %s %s serve --config %s >>%s 2>&1 & echo $!"):format(opts.wrapper or "",
      H.q(H.BIN), H.q(conf), H.q(self.stderr))):gsub("%s+", "")
    H.wait_for(function()
      if H.exists(self.admin_socket) and H.exists(self.agent_socket) then return true end
      local _, code = sh("kill -0 " .. self.pid .. " 2>/dev/null")
      if code ~= 0 then error("server exited: " .. (H.read(self.stderr) or ""), 0) end
      return false
    end, opts.start_seconds or 15, "the server to listen")
  end
  function self.alive()
    local _, code = sh("kill -0 " .. self.pid .. " 2>/dev/null")
    return code == 0
  end
  function self.signal(sig) os.execute(("kill -%s %s 2>/dev/null"):format(sig, self.pid)) end
  -- stop with SIGTERM and wait; returns true when it exited in time
  function self.stop(seconds)
    if not self.pid then return true end
    self.signal("TERM")
    local deadline = os.time() + (seconds or 15)
    while self.alive() do
      if os.time() > deadline then self.signal("KILL") return false end
      os.execute("sleep 0.02")
    end
    self.pid = nil
    return true
  end
  -- admin CLI with --json; returns decoded output, exit code, stderr text
  function self.admin(args, stdin)
    local cmd = ("%s admin --config %s --json %s 2>%s/admin.err"):format(H.q(H.BIN), H.q(conf), args, H.q(dir))
    if stdin then cmd = ("printf '%%s' %s | %s"):format(H.q(stdin), cmd) end
    local out, code = sh(cmd)
    return json.decode(out) or out, code, H.read(dir .. "/admin.err")
  end
  function self.admin_text(args)
    return sh(("%s admin --config %s %s 2>&1"):format(H.q(H.BIN), H.q(conf), args))
  end
  -- a tenant with one agent; returns the token
  function self.agent(tenant, name, type_, groups, extra)
    local t = self.admin("tenant add " .. H.q(tenant))
    assert(type(t) == "table" or tostring(t):find("exists"), "tenant add failed")
    local r, code, err = self.admin(("agent add --tenant %s --name %s --type %s --groups %s %s")
      :format(H.q(tenant), H.q(name), type_ or "caioo", H.q(groups or "Examples"), extra or ""))
    assert(code == 0 and type(r) == "table", "agent add failed: " .. tostring(err))
    return r.token
  end
  if opts.start ~= false then self.start() end
  return self
end

-- An MCP client over the Unix socket (call from inside H.async).
local Client = {}
Client.__index = Client

function H.client(path)
  local s, err = loop.connect(path)
  if not s then return nil, err end
  return setmetatable({ s = s, id = 0, notes = {}, pending = {} }, Client)
end

function Client:send_raw(line)
  return self.s:write(line .. "\n")
end

function Client:send(msg)
  msg.jsonrpc = "2.0"
  return self:send_raw(json.encode(msg))
end

-- Read the next message (decoded), or nil, err.
function Client:recv(timeout)
  local line, err = self.s:read_line(64 * 1048576, timeout or 10)
  if not line then return nil, err end
  return json.decode(line)
end

-- Send a request and wait for its response; notifications seen on the
-- way are kept in self.notes.
function Client:request(method, params, timeout)
  self.id = self.id + 1
  local id = self.id
  self:send({ id = id, method = method, params = params })
  return self:wait(id, timeout)
end

function Client:wait(id, timeout)
  if self.pending[id] then
    local m = self.pending[id]
    self.pending[id] = nil
    return m
  end
  while true do
    local m, err = self:recv(timeout)
    if not m then return nil, err end
    if m.id == id and m.method == nil then return m end
    if m.method then
      self.notes[#self.notes + 1] = m
    else
      self.pending[m.id] = m
    end
  end
end

function Client:initialize(token, version)
  local r = self:request("initialize", {
    protocolVersion = version or "2025-11-25", capabilities = {},
    clientInfo = { name = "tests", version = "1" },
    _meta = { ["io.switchboard/token"] = token },
  })
  if r and r.result then self:send({ method = "notifications/initialized" }) end
  return r
end

function Client:call(name, args, meta)
  return self:request("tools/call", { name = name, arguments = args, _meta = meta })
end

function Client:close() self.s:close() end

return H
