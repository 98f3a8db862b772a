-- Drives a program through a pseudo-terminal with tmux, as a person at a
-- keyboard would: type keys, wait until the screen shows some text.
--
--     local s = tmux_session.start("lua5.4 bin/lualign", {LUALIGN_HISTORY = path})
--     s:wait_for("> ")
--     s:send("1 + 1", "Enter")
--     s:wait_for("\n2\n")
--     s:close()
--
-- Each session has its own tmux server (socket in a temporary folder), so
-- tests never touch a user's tmux.  Waits poll the screen for up to
-- `timeout` seconds (generous: the machine may be busy).

local M = {timeout = tonumber(os.getenv("LUALIGN_TMUX_TIMEOUT")) or 90}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

local function now()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local Session = {}
Session.__index = Session

--- Starts `command` (a shell command line, run in the current folder) in
-- a 200x50 terminal, with the extra environment variables `env`.
function M.start(command, env)
  local dir = run("mktemp -d /tmp/lualign-tmux.XXXXXX"):gsub("%s+$", "")
  local self = setmetatable({dir = dir, socket = dir .. "/socket"}, Session)
  local exports = {}
  for k, v in pairs(env or {}) do exports[#exports + 1] = k .. "=" .. shell_quote(v) end
  local inner = (#exports > 0 and ("env " .. table.concat(exports, " ") .. " ") or "") .. command
  -- remain-on-exit keeps the screen readable after the program ends.
  local conf = dir .. "/tmux.conf"
  local f = assert(io.open(conf, "w"))
  f:write("set -g remain-on-exit on\nset -g history-limit 5000\n")
  f:close()
  local out, ok = run(string.format("tmux -S %s -f %s new-session -d -x 200 -y 50 %s",
    shell_quote(self.socket), shell_quote(conf), shell_quote(inner)))
  if not ok then
    error("tmux did not start: " .. out)
  end
  return self
end

local function tmux(self, args)
  return run("tmux -S " .. shell_quote(self.socket) .. " " .. args)
end

--- Sends keys: literal text, or tmux key names ("Enter", "Tab", "Up",
-- "C-c", "C-d", "BSpace", ...), one per argument.
function Session:send(...)
  for _, key in ipairs({...}) do
    local named = key:match("^[A-Z][%w]*$") or key:match("^C%-%a$") or key:match("^M%-%a$")
    local flag = named and "" or "-l "
    local out, ok = tmux(self, "send-keys -t 0 " .. flag .. shell_quote(key))
    if not ok then error("tmux send-keys failed: " .. out) end
  end
end

--- The whole screen and scroll-back, lines joined (and trailing blanks
-- dropped: a prompt "> " reads ">" at the end of its line).
function Session:screen()
  local out = tmux(self, "capture-pane -p -J -S -1000 -t 0")
  return (out:gsub("[ \t]+\n", "\n"))
end

--- Waits until the screen contains `text` (plain) `count` times (default
-- once); returns the screen, or raises with the screen shown.
function Session:wait_for(text, count)
  count = count or 1
  local deadline = now() + M.timeout
  local screen
  repeat
    screen = self:screen()
    local n, from = 0, 1
    while true do
      local i, j = screen:find(text, from, true)
      if not i then break end
      n, from = n + 1, j + 1
    end
    if n >= count then return screen end
    os.execute("sleep 0.1")
  until now() > deadline
  error(string.format("timed out waiting for %q (x%d); the screen:\n%s", text, count, screen), 2)
end

--- Whether the program has exited (its pane is dead).
function Session:exited()
  local out = tmux(self, "list-panes -t 0 -F '#{pane_dead}'")
  return out:match("1") ~= nil
end

--- Waits until the program exits; raises after the timeout.
function Session:wait_exit()
  local deadline = now() + M.timeout
  while not self:exited() do
    if now() > deadline then error("timed out waiting for the program to exit:\n" .. self:screen(), 2) end
    os.execute("sleep 0.1")
  end
end

function Session:close()
  tmux(self, "kill-server")
  os.execute("rm -rf " .. shell_quote(self.dir))
end

return M
