-- `switchboard admin email VERB`: connect, show, test, update (the core
-- adds autonomous-sends and disconnect). The API key is read from
-- standard input, never from argv.
local M = {}

M.summary = "A tenant's email (SendGrid) connection."

M.opts = {
  ["from-address"] = { "ADDRESS", "The sender address (a verified sender in SendGrid)." },
  ["from-name"] = { "NAME", "The sender's display name." },
  ["api-key"] = { false, "Read a new API key from standard input (update)." },
  hosts = { "URL", "The SendGrid API origin for this connection (a stand-in, for tests)." },
}

local FIELDS = { { "tenant", "tenant" }, { "status", "status" }, { "status_reason", "reason" },
  { "key_id", "API key" }, { "from_address", "from" }, { "from_name", "from name" }, { "scopes", "scopes" },
  { "autonomous_sends", "autonomous sends" }, { "last_tested_at", "last tested" } }

local function text(cli, r)
  local out = cli.fields(r, FIELDS)
  if r.problem then out = out .. "problem: " .. r.problem .. "\n" end
  for _, w in ipairs(r.warnings or {}) do out = out .. "warning: " .. w .. "\n" end
  return out
end

M.verbs = {
  { "connect", "Connect a tenant to SendGrid; the API key is read from standard input.",
    opts = { "tenant", "from-address", "from-name", "hosts" },
    run = function(c, cli)
      return "email.connect", { tenant = c.opts.tenant, from_address = c.opts["from-address"],
        from_name = c.opts["from-name"], hosts = c.opts.hosts, api_key = cli.read_secret() },
        function(r) return "connected\n" .. text(cli, r) end
    end },
  { "show", "Show the connection.", args = { "TENANT?" }, opts = { "tenant" },
    run = function(c, cli)
      return "email.show", { tenant = c.opts.tenant or c.pos[1] }, function(r) return text(cli, r) end
    end },
  { "test", "Test the API key against SendGrid.", args = { "TENANT?" }, opts = { "tenant" },
    run = function(c, cli)
      return "email.test", { tenant = c.opts.tenant or c.pos[1] }, function(r)
        return (r.ok and "connection works\n" or "connection FAILED\n") .. text(cli, r) end
    end },
  { "update", "Change the sender or the hosts, or (--api-key) the key, read from standard input.",
    opts = { "tenant", "from-address", "from-name", "hosts", "api-key" },
    run = function(c, cli)
      return "email.update", { tenant = c.opts.tenant, from_address = c.opts["from-address"],
        from_name = c.opts["from-name"], hosts = c.opts.hosts,
        api_key = c.opts["api-key"] and cli.read_secret() or nil },
        function(r) return "updated\n" .. text(cli, r) end
    end },
}

return M
