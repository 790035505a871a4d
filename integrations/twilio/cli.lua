-- The Twilio connection's CLI verbs: `switchboard admin twilio VERB`.
-- The core adds autonomous-sends and disconnect (every integration has
-- them) and builds the parser from `verbs`; each verb's `run(c, cli)`
-- returns the admin method, its params and a printer for the answer.
local M = {}

M.summary = "A tenant's Twilio connection."

-- Options of these verbs (besides the core's, such as --tenant).
M.opts = {
  ["account-sid"] = { "AC…", "The Twilio account SID." },
  ["api-key-sid"] = { "SK…", "The API key SID; its secret is read from standard input." },
  ["default-number"] = { "+E164", "The default sender number." },
  ["whatsapp-number"] = { "+E164", "The WhatsApp sender number." },
  ["verify-service-sid"] = { "VA…", "The Verify service." },
  hosts = { "URL|api=URL,…", "Twilio hosts for this connection (a stand-in, for tests)." },
  page = { "N", "The page (from 1)." },
  ["page-size"] = { "N", "Messages per page." },
}

local CONN_FIELDS = { { "tenant", "tenant" }, { "status", "status" }, { "status_reason", "reason" },
  { "account_sid", "account" }, { "account_name", "account name" }, { "account_status", "account status" },
  { "api_key_sid", "API key" }, { "default_number", "default number" }, { "whatsapp_number", "WhatsApp" },
  { "verify_service_sid", "Verify service" }, { "autonomous_sends", "autonomous sends" },
  { "number_count", "numbers" }, { "last_tested_at", "last tested" } }
M.FIELDS = CONN_FIELDS

local function conn_text(cli, r)
  local out = cli.fields(r, CONN_FIELDS)
  if r.problem then out = out .. "problem: " .. r.problem .. "\n" end
  for _, w in ipairs(r.warnings or {}) do out = out .. "warning: " .. w .. "\n" end
  return out
end

local function settings(c, params)
  params.default_number = c.opts["default-number"]
  params.whatsapp_number = c.opts["whatsapp-number"]
  params.verify_service_sid = c.opts["verify-service-sid"]
  params.hosts = c.opts.hosts
  return params
end

local SETTINGS = { "default-number", "whatsapp-number", "verify-service-sid", "hosts" }
local function with(...)
  local out = { ... }
  for _, x in ipairs(SETTINGS) do out[#out + 1] = x end
  return out
end

M.verbs = {
  { "connect", "Connect a tenant to Twilio; the API key secret is read from standard input.",
    opts = with("tenant", "account-sid", "api-key-sid"),
    run = function(c, cli)
      local secret = cli.read_secret()
      return "twilio.connect", settings(c, { tenant = c.opts.tenant, account_sid = c.opts["account-sid"],
        api_key_sid = c.opts["api-key-sid"], api_key_secret = secret }), function(r)
        return "connected\n" .. conn_text(cli, r) end
    end },
  { "show", "Show the connection.", args = { "TENANT?" }, opts = { "tenant" },
    run = function(c, cli)
      return "twilio.show", { tenant = c.opts.tenant or c.pos[1] }, function(r) return conn_text(cli, r) end
    end },
  { "test", "Test the connection against Twilio.", args = { "TENANT?" }, opts = { "tenant" },
    run = function(c, cli)
      return "twilio.test", { tenant = c.opts.tenant or c.pos[1] }, function(r)
        return (r.ok and "connection works\n" or "connection FAILED\n") .. conn_text(cli, r) end
    end },
  { "update", "Change settings, or the API key (its secret from standard input).",
    opts = with("tenant", "api-key-sid"),
    run = function(c, cli)
      local params = settings(c, { tenant = c.opts.tenant })
      if c.opts["api-key-sid"] then
        params.api_key_sid = c.opts["api-key-sid"]
        params.api_key_secret = cli.read_secret()
      end
      return "twilio.update", params, function(r) return "updated\n" .. conn_text(cli, r) end
    end },
  { "numbers", "The account's phone numbers.", args = { "TENANT?" }, opts = { "tenant" },
    run = function(c, cli)
      return "twilio.numbers", { tenant = c.opts.tenant or c.pos[1] }, function(r)
        return cli.table(r.numbers, { { "phone_number", "NUMBER" }, { "friendly_name", "NAME" },
          { "voice", "VOICE" }, { "sms", "SMS" }, { "mms", "MMS" } }) end
    end },
  { "usage", "The account's usage by category over a period (default this month).", args = { "TENANT?" },
    opts = { "tenant", "start", "end" },
    run = function(c, cli)
      return "twilio.usage", { tenant = c.opts.tenant or c.pos[1], start = c.opts.start, ["end"] = c.opts["end"] },
        function(r)
          return ("usage from %s to %s\n"):format(r.start, r["end"]) .. cli.table(r.records, {
            { "category", "CATEGORY" }, { "description", "DESCRIPTION" }, { "count", "COUNT" }, { "usage", "USAGE" },
            { "usage_unit", "UNIT" }, { "price", "PRICE" }, { "price_unit", "CURRENCY" } })
        end
    end },
  { "messages", "A preview of the account's messages (--page: the old page number).", args = { "TENANT?" },
    opts = { "tenant", "limit", "after", "page", "page-size" },
    run = function(c, cli)
      return "twilio.messages", { tenant = c.opts.tenant or c.pos[1], page = c.opts.page,
        page_size = c.opts["page-size"], limit = c.opts.limit, after = c.opts.after }, function(r, later)
        local rows = {}
        for i, m in ipairs(r.messages) do
          rows[i] = { to = m.to, from = m.from, body = cli.cut(m.body, 40), status = m.status, date = m.date }
        end
        local out = cli.table(rows, { { "to", "TO" }, { "from", "FROM" }, { "body", "BODY" }, { "status", "STATUS" },
          { "date", "TIME" } }, later)
        if r.page and c.opts.page then
          out = out .. ("page %d%s\n"):format(r.page, r.more and (" (more: --page %d)"):format(r.page + 1) or "")
        end
        return out
      end, not c.opts.page
    end },
}

return M
