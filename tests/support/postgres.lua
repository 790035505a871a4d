-- A real PostgreSQL for a test run: initdb into a scratch directory as the
-- unprivileged system user "postgres" (the suite runs as root, and the
-- server refuses to), listening on a Unix socket in that directory only
-- (no TCP), with password (SCRAM) authentication for the role "sb".
-- Start it in a spec's setup, stop it in its teardown:
--
--   local postgres = require("support.postgres")
--   local server = postgres.start()
--   ... pg.connect(server.conninfo, { password_file = server.password_file })
--   server:stop()
--
-- server:halt() / server:resume() stop and start the same cluster (the
-- data stays), for the tests of a store that goes away and comes back.
local M = {}

local USER = "postgres"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The server's binaries: Debian's postgresql-NN.
local function bindir()
  local out = sh("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1")
  local dir = out:gsub("%s+$", "")
  assert(dir ~= "", "PostgreSQL is not installed (Debian's postgresql)")
  return dir
end

local function as_user(cmd)
  return ("runuser -u %s -- %s"):format(USER, cmd)
end

local Server = {}
Server.__index = Server

local function pg_ctl(self, args)
  return sh(as_user(("%s/pg_ctl -D %s %s"):format(q(self.bin), q(self.data), args)))
end

-- Start the cluster (again); raises with the server's log when it does not.
function Server:resume()
  local opts = ("-c listen_addresses='' -c unix_socket_directories=%s -c fsync=off "
    .. "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
    :format(self.dir)
  local out, code = pg_ctl(self, ("-w -t 60 -l %s -o %s start"):format(q(self.dir .. "/log"), q(opts)))
  if code ~= 0 then
    local f = io.open(self.dir .. "/log")
    local log = f and f:read("a") or ""
    if f then f:close() end
    error("postgres did not start: " .. out .. log, 2)
  end
  self.running = true
end

-- Stop it: "fast" ends the sessions (they see 57P01) and shuts down.
function Server:halt(mode)
  if not self.running then return end
  pg_ctl(self, "-w -t 60 -m " .. (mode or "fast") .. " stop")
  self.running = false
end

-- Stop it for good and remove the scratch directory.
function Server:stop()
  self:halt("immediate")
  os.execute("rm -rf " .. q(self.dir))
end

-- Run SQL as the superuser through psql (setup only: it blocks).
function Server:psql(sql)
  return sh(("PGPASSFILE=/dev/null PGPASSWORD=%s %s/psql -X -q -A -t -v ON_ERROR_STOP=1 -h %s -U sb -d %s -c %s")
    :format(q(self.password), q(self.bin), q(self.dir), q(self.dbname), q(sql)))
end

-- opts.password: the role's password (default: random).
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({ bin = bindir(), dbname = "sb" }, Server)
  -- a directory the server's user owns; not below the suite's 0700 temporary
  -- directory, which that user cannot enter, but named after it, so that
  -- tests/run.sh's cleanup (pkill -f "$SB_TEST_TMP") stops a server that a
  -- killed run left behind
  self.dir = sh("mktemp -d " .. q((os.getenv("SB_TEST_TMP") or "/tmp/sbpg") .. ".pg.XXXXXX")):gsub("%s+$", "")
  self.data = self.dir .. "/data"
  self.password = opts.password or sh("openssl rand -hex 16"):gsub("%s+$", "")
  local pwfile = self.dir .. "/initdb.pw"
  local f = assert(io.open(pwfile, "w"))
  f:write(self.password, "\n")
  f:close()
  os.execute(("chown -R %s %s && chmod 0700 %s && chmod 0600 %s"):format(USER, q(self.dir), q(self.dir), q(pwfile)))
  local out, code = sh(as_user(("%s/initdb -D %s -U sb --pwfile=%s --auth-local=scram-sha-256 "
    .. "--auth-host=reject -E UTF8 --locale=C.UTF-8 --no-sync")
    :format(q(self.bin), q(self.data), q(pwfile))))
  os.remove(pwfile)
  if code ~= 0 then
    os.execute("rm -rf " .. q(self.dir))
    error("initdb failed: " .. out, 2)
  end
  self:resume()
  -- the superuser's own database is "postgres"; the tests' is "sb"
  self.dbname = "postgres"
  local cout, ccode = self:psql("CREATE DATABASE sb")
  self.dbname = "sb"
  if ccode ~= 0 then
    self:stop()
    error("CREATE DATABASE: " .. cout, 2)
  end
  self.socket = self.dir .. "/.s.PGSQL.5432"
  self.conninfo = ("host=%s dbname=sb user=sb"):format(self.dir)
  self.url = ("postgresql://sb@/sb?host=%s"):format(self.dir)
  -- the client's copy of the password: root's, 0600
  self.password_file = self.dir .. "/client.pw"
  f = assert(io.open(self.password_file, "w"))
  f:write(self.password, "\n")
  f:close()
  os.execute("chmod 0600 " .. q(self.password_file))
  return self
end

-- Run SQL on database dbname (default the server's own) through psql as
-- the superuser: the text psql prints unaligned ("|" between columns, as
-- sqlite3 prints), and its exit code. Blocking: setup and checks only.
function Server:psql_on(dbname, sql, json)
  if json then sql = "SELECT coalesce(json_agg(t), '[]') FROM (" .. sql:gsub("[%s;]+$", "") .. ") t" end
  return sh(("PGPASSFILE=/dev/null PGPASSWORD=%s %s/psql -X -q -A -t -v ON_ERROR_STOP=1 -h %s -U sb -d %s -c %s")
    :format(q(self.password), q(self.bin), q(self.dir), q(dbname or self.dbname), q(sql)))
end

-- pg_dump of database dbname (plain SQL text), as the superuser.
function Server:dump(dbname)
  return sh(("PGPASSFILE=/dev/null PGPASSWORD=%s %s/pg_dump -h %s -U sb %s")
    :format(q(self.password), q(self.bin), q(self.dir), q(dbname or self.dbname)))
end

-- A database of its own (a server's, in the integration suite on
-- PostgreSQL): created empty, owned by the role sb. Returns its name.
local ndb = 0
function Server:create_database(prefix)
  ndb = ndb + 1
  local name = ("%s_%d_%d"):format(prefix or "db", math.floor(os.time() % 100000), ndb)
  local out, code = self:psql("CREATE DATABASE " .. name)
  if code ~= 0 then error("CREATE DATABASE " .. name .. ": " .. out, 2) end
  return name
end

-- The store setting of a switchboard config for database name.
function Server:store_config(name)
  return { host = self.dir, dbname = name, user = "sb", password_file = self.password_file }
end

-- The server a test run started (tests/run.sh: SB_PG_DIR), or nil.
function M.attach(dir)
  dir = dir or os.getenv("SB_PG_DIR")
  if not dir or dir == "" then return nil end
  local self = setmetatable({ bin = bindir(), dbname = "sb", dir = dir, data = dir .. "/data", running = true }, Server)
  self.password_file = dir .. "/client.pw"
  local f = assert(io.open(self.password_file))
  self.password = f:read("l")
  f:close()
  self.socket = dir .. "/.s.PGSQL.5432"
  self.conninfo = ("host=%s dbname=sb user=sb"):format(dir)
  self.url = ("postgresql://sb@/sb?host=%s"):format(dir)
  return self
end

-- switchboard exec tests/support/postgres.lua start | stop DIR: one
-- PostgreSQL for a whole test run (start prints its directory).
if arg and arg[0] and arg[0]:match("support/postgres%.lua$") then
  if arg[1] == "start" then
    local s = M.start()
    io.write(s.dir, "\n")
  elseif arg[1] == "stop" and arg[2] then
    local s = M.attach(arg[2])
    s:stop()
  else
    io.stderr:write("usage: postgres.lua start | stop DIR\n")
    os.exit(2)
  end
end

return M
