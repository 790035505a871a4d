-- For unit specs that evaluate policies on a hand-made call view: what the
-- pipeline adds from the tool's `sends` declaration (sends, recipient,
-- outbound, connected), read from the real tool definitions of the
-- integration packages.
local registry = require("switchboard.registry")
local integrations = require("switchboard.integrations")

local ROOT = os.getenv("SB_ROOT") or "."
local reg

return function(call)
  if not reg then
    local dirs = {}
    for _, p in ipairs(assert(integrations.load({ ROOT .. "/integrations" }))) do
      dirs[#dirs + 1] = { dir = p.tools_dir, package = p }
    end
    reg = assert(registry.load(dirs))
  end
  local tool = reg.tools[call.tool]
  local o = tool and registry.outbound(tool, call.args or {})
  if o then call.sends, call.recipient, call.outbound = true, o.recipient, o.outbound end
  if call.connected == nil then call.connected = tool ~= nil and tool.connection ~= nil end
  return call
end
