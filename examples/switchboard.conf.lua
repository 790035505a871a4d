-- An example configuration. Every key is optional; these are the defaults
-- unless noted. Relative paths are relative to the working directory.
return {
  data_dir = "./var",                    -- the database and the master key live here
  agent_socket = "./run/agent.sock",     -- MCP for agents
  agent_socket_mode = "0660",
  admin_socket = "./run/admin.sock",     -- always mode 0600
  master_key_file = "./var/master.key",  -- created on first start when missing
  tool_dirs = { "examples/tools" },      -- in addition to the packages' tools (default: none)
  policy_dir = "policies",               -- default: the project's policies/
  limits = {
    connections = 256,          -- open agent connections
    line_bytes = 1048576,       -- largest message
    idle_seconds = 300,         -- a connection with no message and no call for this long is closed
    call_seconds = 120,
    calls_per_connection = 32,  -- tools/call in progress on one connection
    policy_instructions = 1000000,
  },
  log = { level = "info" },      -- add file = "./var/switchboard.log" to log to a file, format = "json" for JSON lines
  -- MCP over HTTP for remote clients (off unless listen is set): loopback
  -- here; another address needs tls_cert/tls_key or behind_tls_proxy = true
  http = { listen = "127.0.0.1:8733" },
  audit = { bodies = "redacted", flush_ms = 20 },
  tool_settings = {
    example_fetch = { base_url = "http://127.0.0.1:8089" },  -- not a default
  },
}
