-- The email package's test setup: its simulator as a process, a server
-- that discovers this package beside the built-in ones, and a tenant
-- connected to the simulator with an agent holding the Email group.
-- (Loaded by the specs with dofile: it is not on the test path.)
local H = require("helpers")
local json = require("switchboard.json")

local E = {}

E.DIR = H.ROOT .. "/examples/integrations/email"
E.GROUP = "Email"
E.FROM = "clinic@example.com"
E.DIRS = { H.ROOT .. "/integrations", H.ROOT .. "/examples/integrations" }

-- the simulator's keys (sim.lua M.KEYS), computed the same way
local function pad(s, n) return s .. ("0"):rep(n - #s) end
local function key(id, secret) return "SG." .. pad(id, 22) .. "." .. pad(secret, 43) end
E.KEY = key("AcmeMainKey", "acme-main-secret-")
E.SEND_ONLY = key("AcmeSendOnly", "acme-send-only-secret-")
E.READ_ONLY = key("AcmeReadOnly", "acme-read-only-secret-")
E.KEY_ID = pad("AcmeMainKey", 22)
E.KEY_SECRET = pad("acme-main-secret-", 43)

local function alive(pid)
  local out, code = H.sh("kill -0 " .. pid .. " 2>/dev/null && ps -o stat= -p " .. pid)
  return code == 0 and not out:match("^%s*Z")
end

-- Start the simulator as an operator would: `switchboard sim email`, with a
-- configuration whose integration_dirs hold this package. Returns
-- { pid, url, stop, stats(), control(method, path, body) }.
function E.sim()
  local dir = H.tmpdir("emailsim")
  local pf = dir .. "/port"
  H.write(dir .. "/sim.conf.lua", ("return { integration_dirs = { %q, %q } }\n"):format(E.DIRS[1], E.DIRS[2]))
  local pid = (H.sh(("exec %s sim email --config %s --port 0 --port-file %s >%s/stdout 2>%s/stderr & echo $!")
    :format(H.q(H.BIN), H.q(dir .. "/sim.conf.lua"), H.q(pf), H.q(dir), H.q(dir))):gsub("%s+", ""))
  H.wait_for(function()
    if H.exists(pf) then return true end
    if not alive(pid) then error("the email simulator exited: " .. (H.read(dir .. "/stderr") or ""), 0) end
  end, 10, "the email simulator's port file")
  local sim = { pid = pid, url = "http://127.0.0.1:" .. tonumber(H.read(pf)), dir = dir }
  function sim.stop()
    if alive(sim.pid) then
      os.execute("kill -TERM " .. sim.pid)
      H.wait_for(function() return not alive(sim.pid) end, 10, "the email simulator to stop")
    end
  end
  -- outside the loop: curl, so setup code needs no coroutine
  function sim.control(method, path, body)
    local out = H.sh(("curl -s -X %s %s %s"):format(method, body and ("-d " .. H.q(json.encode(body))) or "",
      H.q(sim.url .. "/__sim/" .. path)))
    return json.decode(out)
  end
  function sim.stats() return sim.control("GET", "stats") end
  return sim
end

-- A server that discovers this package; policies leave room for test sends.
function E.server(opts)
  opts = opts or {}
  local cfg = { integration_dirs = E.DIRS,
                policy_settings = { recipients = { per_recipient = 100, daily_budget = 1000 } } }
  for k, v in pairs(opts.config or {}) do cfg[k] = v end
  return H.server({ config = cfg, start = opts.start })
end

-- Connect tenant `name` (added, given custom.email) to the simulator and
-- add an agent holding `groups` (default the Email group). Returns the
-- agent's token and the connect answer.
function E.connect(srv, sim, name, opts)
  opts = opts or {}
  if not opts.existing then
    local _, code, err = srv.admin("tenant add " .. H.q(name))
    assert(code == 0, "tenant add: " .. tostring(err))
  end
  local _, fcode, ferr = srv.admin(("tenant features %s +custom.email"):format(H.q(name)))
  assert(fcode == 0, "tenant features: " .. tostring(ferr))
  local conn, ccode, cerr = srv.admin(("email connect --tenant %s --from-address %s --hosts %s")
    :format(H.q(name), E.FROM, H.q(sim.url)), opts.key or E.KEY)
  assert(ccode == 0, "email connect: " .. tostring(cerr))
  if opts.agent == false then return nil, conn end
  local a, acode, aerr = srv.admin(("agent add --tenant %s --name %s --type caioo --tier owner --groups %s")
    :format(H.q(name), opts.agent_name or "mailer", H.q(opts.groups or E.GROUP)))
  assert(acode == 0, "agent add: " .. tostring(aerr))
  return a.token, conn
end

-- Every place the key must never be: the log, the database (and its
-- WAL), the admin error output. Returns the first place it was found, or nil.
function E.leaked(srv, secret)
  local places = { srv.log, srv.stderr, srv.dir .. "/admin.err", srv.dir .. "/data/switchboard.db",
                   srv.dir .. "/data/switchboard.db-wal" }
  for _, p in ipairs(places) do
    local s = H.read(p)
    if s and s:find(secret, 1, true) then return p end
  end
  return nil
end

return E
