--- The interactive prompt: evaluates expressions and statements, prints
-- results (tensors in their readable form), and continues incomplete input
-- on the next line.

local M = {}

local function format_value(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

-- Compiles a line as an expression first (so `x + 1` prints its value), then
-- as a statement.  Returns the chunk, or nil and whether more input may complete it.
local function compile(source)
  local chunk = load("return " .. source, "=stdin")
  if chunk then return chunk end
  local err
  chunk, err = load(source, "=stdin")
  if chunk then return chunk end
  return nil, err:sub(-5) == "<eof>", err
end

--- Reads, evaluates and prints until end of input.  Returns 0.
function M.run(input, output)
  input, output = input or io.stdin, output or io.stdout
  local la = require "lualign"
  output:write(string.format("lualign %s on %s -- `la` is loaded; Ctrl-D exits\n", la.version, _VERSION))
  local buffer = nil
  while true do
    output:write(buffer and ">> " or "> ")
    output:flush()
    local line = input:read("l")
    if not line then output:write("\n"); return 0 end
    buffer = buffer and (buffer .. "\n" .. line) or line
    local chunk, incomplete, err = compile(buffer)
    if chunk then
      buffer = nil
      local results = table.pack(pcall(chunk))
      if not results[1] then
        output:write(tostring(results[2]), "\n")
      elseif results.n > 1 then
        local parts = {}
        for k = 2, results.n do parts[#parts + 1] = format_value(results[k]) end
        output:write(table.concat(parts, "\t"), "\n")
      end
    elseif not incomplete then
      output:write(err, "\n")
      buffer = nil
    end
  end
end

return M
