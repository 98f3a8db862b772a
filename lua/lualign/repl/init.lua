--- The interactive prompt: evaluates expressions and statements, prints
-- results (tensors in their readable form, tables as listings), and
-- continues incomplete input on the next line.
--
-- On a terminal it edits lines with lualign.sys.lineedit (history in
-- $LUALIGN_HISTORY or ~/.lualign_history, Tab completion), and Ctrl-C
-- interrupts a running computation and returns to the prompt with every
-- global kept.  Otherwise it reads plain lines from its input.

local pretty = require "lualign.repl.pretty"
local complete = require "lualign.repl.complete"

local lineedit = require("lualign.sys").lineedit

local M = {history_size = 1000}

-- Compiles a line as an expression first (so `x + 1` prints its value), then
-- as a statement.  Returns the chunk, or nil and whether more input may complete it.
local function compile(source, env)
  local chunk = load("return " .. source, "=stdin", "t", env)
  if chunk then return chunk end
  local err
  chunk, err = load(source, "=stdin", "t", env)
  if chunk then return chunk end
  return nil, err:sub(-5) == "<eof>", err
end

----------------------------------------------------------------------------
-- History

--- The history file: $LUALIGN_HISTORY, or ~/.lualign_history.
function M.history_path()
  local path = os.getenv("LUALIGN_HISTORY")
  if path and path ~= "" then return path end
  local home = os.getenv("HOME")
  return home and home ~= "" and (home .. "/.lualign_history") or nil
end

-- The last history_size lines of the file (none when it does not exist).
local function load_history(path)
  local lines = {}
  local f = path and io.open(path, "r")
  if not f then return lines end
  for line in f:lines() do
    if line ~= "" then lines[#lines + 1] = line end
  end
  f:close()
  local first = math.max(1, #lines - M.history_size + 1)
  return table.move(lines, first, #lines, 1, {})
end

-- Rewrites the file with the kept lines when it has grown to twice that.
local function trim_history_file(path, lines, file_lines)
  if file_lines <= 2 * M.history_size then return true end
  local f, err = io.open(path, "w")
  if not f then return nil, err end
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  return true
end

local function count_lines(path)
  local n, f = 0, io.open(path, "r")
  if not f then return 0 end
  for _ in f:lines() do n = n + 1 end
  f:close()
  return n
end

local History = {}
History.__index = History

local function new_history(path)
  local self = setmetatable({path = path, lines = load_history(path)}, History)
  if path then
    local ok, err = trim_history_file(path, self.lines, count_lines(path))
    if not ok then self:disable(err) end
  end
  return self
end

function History:disable(err)
  if self.path then io.stderr:write("lualign: history not saved: ", tostring(err), "\n") end
  self.path = nil
end

-- Adds a line (not blank, not a repeat of the last) and appends it to the file.
function History:add(line)
  if line:match("^%s*$") or self.lines[#self.lines] == line then return end
  self.lines[#self.lines + 1] = line
  if #self.lines > M.history_size then table.remove(self.lines, 1) end
  if not self.path then return end
  local f, err = io.open(self.path, "a")
  if not f then return self:disable(err) end
  local ok, werr = f:write(line, "\n")
  f:close()
  if not ok then self:disable(werr) end
end

----------------------------------------------------------------------------
-- Reading lines

-- A reader: read(prompt) -> line, or nil and "eof" or "interrupt".
local function terminal_reader(history, env)
  local function completer(text) return complete.candidates(text, env) end
  return function(prompt)
    return lineedit.readline(prompt, history.lines, completer)
  end
end

local function plain_reader(input, output)
  return function(prompt)
    output:write(prompt)
    output:flush()
    local line = input:read("l")
    if line == nil then
      output:write("\n")
      return nil, "eof"
    end
    return line
  end
end

----------------------------------------------------------------------------
-- Evaluating

-- The frames of a traceback taken in the message handler, up to where the
-- REPL's own frames begin, without the call to error() itself.
local function user_frames(trace)
  local kept = {}
  for line in trace:gmatch("[^\n]+") do
    if line:match("^%s+%[C%]: in function 'xpcall'") or line:match("interruptible") or
       line:find("lualign/repl/init.lua", 1, true) then
      break
    end
    if not line:match("^stack traceback:") and not line:match("^%s*%[C%]: in function 'error'") then
      kept[#kept + 1] = line
    end
  end
  return kept
end

-- Whether the frames are all of the typed code (or C and tail calls).
local function only_typed_code(frames)
  for _, line in ipairs(frames) do
    if not (line:match("^%s*stdin:") or line:match("^%s*%[C%]") or line:match("tail calls")) then
      return false
    end
  end
  return true
end

-- The message of an error, with a traceback when it came from inside a
-- function that was not typed at the prompt.
local function error_message(err)
  local msg = type(err) == "string" and err or pretty.format(err)
  local frames = user_frames(debug.traceback("", 2))
  if only_typed_code(frames) then return msg end
  return msg .. "\nstack traceback:\n" .. table.concat(frames, "\n")
end

-- Runs a chunk; Ctrl-C interrupts it when lineedit can catch SIGINT.
local function evaluate(chunk)
  if lineedit then return table.pack(lineedit.interruptible(chunk, error_message)) end
  return table.pack(xpcall(chunk, error_message))
end

local function print_results(results, output, terminal)
  if not results[1] then
    -- The terminal echoed ^C without a line break.
    if terminal and tostring(results[2]):match("interrupted!") then output:write("\n") end
    output:write(tostring(results[2]), "\n")
  elseif results.n > 1 then
    output:write(pretty.format_all(table.unpack(results, 2, results.n)), "\n")
  end
end

--- Sets the globals of an interactive session: la, nn, optim, loss, help;
-- and has the data readers say (on output, default stdout) which fields of
-- a file they ignore.
function M.preload(env, output)
  env = env or _G
  output = output or io.stdout
  local la = require "lualign"
  env.la = la
  env.nn, env.optim, env.loss = la.nn, la.optim, la.loss
  env.help = require("lualign.repl.help").help
  la.data.on_ignored_fields(function(note) output:write("note: ", note.text, "\n") end)
  return env
end

--- Reads, evaluates and prints until end of input.  opts: input and output
-- (files; default the standard ones), env (the globals; default _G),
-- terminal (use the line editor; default: when both are terminals), and
-- banner (default true).  Returns the exit status, 0.
function M.run(opts)
  opts = opts or {}
  local input, output = opts.input or io.stdin, opts.output or io.stdout
  local env = M.preload(opts.env, output)
  local terminal = opts.terminal
  if terminal == nil then
    terminal = input == io.stdin and output == io.stdout and lineedit ~= nil and
               lineedit.isatty(0) and lineedit.isatty(1) and os.getenv("TERM") ~= "dumb"
  end
  local history = new_history(terminal and M.history_path() or nil)
  local read = terminal and terminal_reader(history, env) or plain_reader(input, output)
  if opts.banner ~= false then
    output:write(string.format("lualign %s on %s -- la, nn, optim, loss loaded; help() for help; Ctrl-D exits\n",
      env.la.version, _VERSION))
  end
  if lineedit then lineedit.catch_interrupts(true) end
  local buffer = nil
  while true do
    output:flush()
    local line, why = read(buffer and ">> " or "> ")
    if line == nil and why == "interrupt" then
      buffer = nil
    elseif line == nil then
      if lineedit then lineedit.catch_interrupts(false) end
      return 0
    else
      history:add(line)
      buffer = buffer and (buffer .. "\n" .. line) or line
      local chunk, incomplete, err = compile(buffer, env)
      if chunk then
        buffer = nil
        print_results(evaluate(chunk), output, terminal)
      elseif not incomplete then
        output:write(err, "\n")
        buffer = nil
      end
    end
  end
end

return M
