-- The REPL driven through a pseudo-terminal (tmux), as a person uses it:
-- typing, Tab, arrows, Ctrl-C, Ctrl-D.  See tests/tmux_session.lua.

local tmux_session = require "tmux_session"

local function temp_path()
  local p = io.popen("mktemp /tmp/lualign-history.XXXXXX")
  local path = p:read("l")
  p:close()
  return path
end

-- Starts the REPL of this checkout with its own history file.
local function start_repl(history)
  local s = tmux_session.start("lua5.4 bin/lualign", {LUALIGN_HISTORY = history, HOME = "/nonexistent"})
  local ok, err = pcall(s.wait_for, s, "Ctrl-D exits\n>")
  if not ok then
    s:close()
    error(err, 0)
  end
  return s
end

describe("the REPL on a terminal", function()
  local session, history

  before_each(function()
    history = temp_path()
    session = start_repl(history)
  end)

  after_each(function()
    if session then session:close() end
    os.remove(history)
  end)

  it("prints expressions without print, tensors readably", function()
    session:send("x = 20 + 1", "Enter")
    session:send("x * 2", "Enter")
    session:wait_for("\n42\n")
    session:send("la.tensor({{1, 2}, {3, 4}})", "Enter")
    session:wait_for("tensor([[1, 2],\n        [3, 4]], shape=(2, 2), dtype=int64)")
    session:send("{lr = 0.5, sizes = {2, 3}}", "Enter")
    session:wait_for("{lr = 0.5, sizes = {2, 3}}")
  end)

  it("continues an incomplete statement on the next line", function()
    session:send("function square(v)", "Enter")
    session:wait_for(">>")
    session:send("return v * v", "Enter")
    session:send("end", "Enter")
    session:send("square(9)", "Enter")
    session:wait_for("\n81\n")
  end)

  it("completes a method name with Tab", function()
    session:send("t = la.ones(2, 3)", "Enter")
    session:send("t:resh", "Tab")
    session:wait_for("> t:reshape")
    session:send("(3, 2):sum():item()", "Enter")
    session:wait_for("t:reshape(3, 2):sum():item()\n6.0\n")
  end)

  it("completes fields of modules and shows the candidates when ambiguous", function()
    session:send("la.nn.Li", "Tab")
    session:wait_for("> la.nn.Linear")
    session:send("C-u", "la.ze", "Tab", "Tab")
    session:wait_for("zeros_like")
    local screen = session:wait_for("> la.zero")
    assert.truthy(screen:find("zero_grad", 1, true))
  end)

  it("interrupts a running loop with Ctrl-C and keeps the session's state", function()
    session:send("kept = 42", "Enter")
    -- The output "looping" (not in the typed line) shows the loop has begun.
    session:send("print('loop' .. 'ing'); n = 0; while true do n = n + 1; la.zeros(4):add_(1) end", "Enter")
    session:wait_for("\nlooping\n")
    session:send("C-c")
    session:wait_for("interrupted!")
    session:send("kept + (n > 0 and 1000 or 0)", "Enter")
    session:wait_for("\n1042\n")
  end)

  it("clears the line on Ctrl-C at the prompt, and exits on Ctrl-D", function()
    session:send("this is not lua", "C-c")
    session:wait_for("this is not lua^C")
    session:send("1 + 1", "Enter")
    local screen = session:wait_for("\n2\n")
    assert.falsy(screen:find("syntax error", 1, true))
    session:send("C-d")
    session:wait_exit()
  end)

  it("recalls history with the up arrow, within and across sessions", function()
    session:send("marker = 1234", "Enter")
    session:send("marker + 1", "Enter")
    session:wait_for("\n1235\n")
    session:send("Up", "Up", "Enter")            -- marker = 1234 again
    session:send("Up", "Up", "C-a", "C-k", "marker", "Enter")
    session:wait_for("\n1234\n")
    session:send("C-d")
    session:wait_exit()
    session:close()
    session = start_repl(history)
    session:send("Up", "Up", "Enter")             -- the last session's `marker = 1234`
    session:send("marker * 2", "Enter")
    session:wait_for("\n2468\n")
  end)

  it("edits within the line: Home/End, arrows over UTF-8, Ctrl-W", function()
    session:send("s = 'h\u{e9}llo w\u{f6}rld'", "Left", "Left", "Left", "Left", "BSpace", "X")
    session:send("Home", "C-d", "z", "End", "Enter")
    session:send("z", "Enter")
    session:wait_for('"h\u{e9}llo wXrld"')
    session:send("1 + 2 + 3 4 5", "C-w", "C-w", "Enter")
    session:wait_for("\n6\n")
  end)

  it("shows help for library functions", function()
    session:send("help(la.nn.Linear)", "Enter")
    session:wait_for("constructor: Linear(in_features, out_features, opts)")
    session:send("help('la.optim.AdamW')", "Enter")
    session:wait_for("weight_decay")
  end)
end)
