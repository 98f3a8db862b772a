--- JSONL readers for the three data formats (docs/data.md, "Formats"), with validation and
-- normalisation.  Every malformed line raises an error "FILE:LINE: what is wrong".
--
--   for ex in jsonl.sft(path) do ... end          -- {prompt, completion, messages, ...}
--   for ex in jsonl.preference(path) do ... end   -- {prompt, chosen, rejected, p, ...}
--   for ex in jsonl.prompts(path) do ... end      -- {prompt, ...}
--
-- The iterators close their file when the loop ends, also on `break` (Lua 5.4's
-- to-be-closed fourth value of the generic for).  This module does not need the
-- engine: it only uses lua-cjson.

local cjson_ok, cjson_mod = pcall(require, "cjson")
if not cjson_ok then
  error("lualign.data needs lua-cjson (Debian: apt-get install lua-cjson)", 0)
end

-- A private instance, so settings do not leak into other users of cjson:
-- NaN, Infinity and hexadecimal numbers are not JSON and are refused.
local cjson = cjson_mod.new()
cjson.decode_invalid_numbers(false)
local null = cjson.null

local M = {}

M.ROLES = {system = true, user = true, assistant = true}

local BOM = "\239\187\191"

----------------------------------------------------------------------------
-- Small helpers

local function typename(v)
  if v == null then return "null" end
  local t = type(v)
  if t == "number" then return "number" end
  if t == "table" then
    if next(v) == nil then return "empty array or object" end
    return v[1] ~= nil and "array" or "object"
  end
  return t
end

local function short(v)
  local s
  if type(v) == "string" then s = string.format("%q", v)
  elseif type(v) == "number" then
    s = (math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53)
      and string.format("%d", v) or tostring(v)
  else s = typename(v) end
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

--- A JSON number as a Lua integer when it is integral (Debian's lua-cjson 2.1.0
-- decodes every number as a float), otherwise unchanged.
function M.normalize_number(v)
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
    return math.tointeger(v)
  end
  return v
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- Raised errors are tables while a line is checked, turned into "FILE:LINE: msg".
local Problem = {}
local function problem(fmt, ...)
  error(setmetatable({msg = string.format(fmt, ...)}, Problem), 0)
end

local function check_text(obj, key, what)
  local v = obj[key]
  if v == nil then problem("missing field %q%s", key, what or "") end
  if type(v) ~= "string" then
    problem("field %q must be a string, got %s", key, typename(v))
  end
  if not v:find("%S") then problem("field %q is empty", key) end
  if not utf8.len(v) then problem("field %q is not valid UTF-8", key) end
  return v
end

-- Copies the keys not in `known` into a `meta` table (nil when there are none).
local function extras(obj, known)
  local meta
  for k, v in pairs(obj) do
    if not known[k] then
      meta = meta or {}
      if type(v) == "number" then v = M.normalize_number(v) end
      meta[k] = v
    end
  end
  return meta
end

----------------------------------------------------------------------------
-- Validation of one decoded object per format.  Each returns the normalised
-- example or raises a Problem.

local SFT_KEYS = {prompt = true, completion = true, messages = true}

--- Validates a decoded SFT object and returns the normalised example (raises a
-- problem naming the field otherwise).
function M.check_sft(obj)
  local ex
  if obj.messages ~= nil then
    if obj.prompt ~= nil or obj.completion ~= nil then
      problem("give either \"messages\" or \"prompt\"/\"completion\", not both")
    end
    local msgs = obj.messages
    if type(msgs) ~= "table" or (next(msgs) ~= nil and msgs[1] == nil) then
      problem("field \"messages\" must be an array, got %s", typename(msgs))
    end
    if #msgs == 0 then problem("field \"messages\" is empty") end
    local out, has_assistant = {}, false
    for i, m in ipairs(msgs) do
      if type(m) ~= "table" or m[1] ~= nil or next(m) == nil then
        problem("messages[%d] must be an object, got %s", i, typename(m))
      end
      local role = m.role
      if role == nil then problem("messages[%d]: missing field \"role\"", i) end
      if type(role) ~= "string" then
        problem("messages[%d]: field \"role\" must be a string, got %s", i, typename(role))
      end
      if not M.ROLES[role] then
        problem("messages[%d]: unknown role %s (expected system, user or assistant)", i, short(role))
      end
      local content = m.content
      if content == nil then problem("messages[%d]: missing field \"content\"", i) end
      if type(content) ~= "string" then
        problem("messages[%d]: field \"content\" must be a string, got %s", i, typename(content))
      end
      if not content:find("%S") then problem("messages[%d]: field \"content\" is empty", i) end
      if not utf8.len(content) then problem("messages[%d]: field \"content\" is not valid UTF-8", i) end
      if role == "assistant" then has_assistant = true end
      out[i] = {role = role, content = content}
    end
    if #out ~= count_keys(msgs) then problem("field \"messages\" must be an array") end
    if not has_assistant then problem("\"messages\" has no assistant turn to learn from") end
    ex = {messages = out}
  else
    if obj.prompt == nil and obj.completion == nil then
      problem("missing field \"messages\", or \"prompt\" and \"completion\"")
    end
    local prompt = check_text(obj, "prompt")
    local completion = check_text(obj, "completion")
    ex = {prompt = prompt, completion = completion,
          messages = {{role = "user", content = prompt}, {role = "assistant", content = completion}}}
  end
  ex.meta = extras(obj, SFT_KEYS)
  return ex
end

local PREF_KEYS = {prompt = true, chosen = true, rejected = true, p = true, votes = true, margin = true}

-- The soft label ("p" or "votes") and "margin" of a pair ex (with prompt,
-- chosen, rejected), which is oriented so chosen is the majority side.
local function label_pair(obj, ex)
  local p, votes
  if obj.p ~= nil and obj.votes ~= nil then
    problem("give either \"p\" or \"votes\", not both")
  end
  if obj.p ~= nil then
    p = obj.p
    if type(p) ~= "number" then problem("field \"p\" must be a number in [0, 1], got %s", typename(p)) end
    if p ~= p or p < 0 or p > 1 then problem("field \"p\" must be in [0, 1], got %s", short(p)) end
    p = p + 0.0
  elseif obj.votes ~= nil then
    local v = obj.votes
    if type(v) ~= "table" or (next(v) ~= nil and v[1] == nil) then
      problem("field \"votes\" must be an array [n_chosen, n_rejected], got %s", typename(v))
    end
    if #v ~= 2 or count_keys(v) ~= 2 then
      problem("field \"votes\" must have 2 entries [n_chosen, n_rejected], got %d", count_keys(v))
    end
    local a, b = v[1], v[2]
    for i, n in ipairs({a, b}) do
      if type(n) ~= "number" or n ~= n or n < 0 or n ~= math.floor(n) or n >= 2^53 then
        problem("field \"votes\": entry %d must be a non-negative integer, got %s", i, short(n))
      end
    end
    a, b = math.tointeger(a), math.tointeger(b)
    if a + b == 0 then problem("field \"votes\" is [0, 0]: no votes to make a label from") end
    votes = {a, b}
    p = a / (a + b)
  end
  local margin = obj.margin
  if margin ~= nil then
    if type(margin) ~= "number" or margin ~= margin or margin == math.huge or margin == -math.huge then
      problem("field \"margin\" must be a finite number, got %s", short(margin))
    end
    margin = margin + 0.0
  end
  ex.margin, ex.soft, ex.p_raw, ex.votes_raw, ex.flipped = margin, p ~= nil, p or 1.0, votes, false
  p = p or 1.0
  if p < 0.5 then
    -- orient the pair so `chosen` is the side most raters preferred
    ex.chosen, ex.rejected, ex.flipped = ex.rejected, ex.chosen, true
    ex.chosen_messages, ex.rejected_messages = ex.rejected_messages, ex.chosen_messages
    p = 1.0 - p
    if margin then ex.margin = -margin end
    if votes then votes = {votes[2], votes[1]} end
  end
  ex.p, ex.votes = p, votes
  ex.meta = extras(obj, PREF_KEYS)
  return ex
end

-- What lualign.data.conversation needs of this reader.
local HELPERS = {problem = problem, typename = typename, short = short, count_keys = count_keys,
  check_text = check_text, extras = extras}

--- Validates a decoded preference object: the pair oriented so chosen is the
-- majority side, p in [0.5, 1], votes and margin normalised.  The
-- conversational forms (lualign.data.conversation) are read there.
function M.check_preference(obj)
  local conversation = require "lualign.data.conversation"
  if conversation.handles(obj) then
    return conversation.check_preference(HELPERS, obj, PREF_KEYS, function(ex) return label_pair(obj, ex) end)
  end
  local ex = {prompt = check_text(obj, "prompt"), chosen = check_text(obj, "chosen"),
    rejected = check_text(obj, "rejected")}
  return label_pair(obj, ex)
end

local PROMPT_KEYS = {prompt = true}

function M.check_prompt(obj)
  local ex = {prompt = check_text(obj, "prompt")}
  ex.meta = extras(obj, PROMPT_KEYS)
  return ex
end

--- The validator of each format, by kind ("sft", "preference", "prompts").
M.checkers = {sft = M.check_sft, preference = M.check_preference, prompts = M.check_prompt}

----------------------------------------------------------------------------
-- Reading

--- Decodes and validates one line's text (BOM and trailing CR already removed).
-- Returns the example, or nil and a message (without file and line).
function M.parse_line(kind, text)
  local check = M.checkers[kind]
  if not check then error("unknown data kind " .. tostring(kind) .. " (sft, preference or prompts)", 2) end
  local ok, obj = pcall(cjson.decode, text)
  if not ok then
    local msg = tostring(obj):gsub("^.-:%d+: ", "")
    return nil, "invalid JSON: " .. msg
  end
  if type(obj) ~= "table" or obj[1] ~= nil or (next(obj) == nil and text:match("^%s*%[")) then
    return nil, "expected a JSON object, got " .. (obj == null and "null" or typename(obj))
  end
  local ok2, ex = pcall(check, obj)
  if ok2 then return ex end
  if getmetatable(ex) == Problem then return nil, kind .. ": " .. ex.msg end
  error(ex, 0)
end

----------------------------------------------------------------------------
-- Fields a format does not use

local ignored_listener

--- Sets the function told, when a reader has finished a file, which fields
-- of its lines the format does not use (they go to each example's `meta`,
-- and no loss reads them: a "label" in a preference file is not a soft
-- label).  fn(note) gets {path, kind, fields = {name = lines}, lines, text};
-- nil turns the reports off.  A recipe's run prints them (recipe.run).
function M.on_ignored_fields(fn) ignored_listener = fn end

-- Counts the meta fields of an example into counts (name -> lines).
local function count_ignored(counts, ex)
  if ex.meta then for k in pairs(ex.meta) do counts[k] = (counts[k] or 0) + 1 end end
end

local function report_ignored(path, kind, counts, lines)
  if not ignored_listener or next(counts) == nil then return end
  local names, parts = {}, {}
  for k in pairs(counts) do names[#names + 1] = k end
  table.sort(names)
  for i, k in ipairs(names) do parts[i] = string.format("\"%s\" (%d of %d lines)", k, counts[k], lines) end
  ignored_listener({path = path, kind = kind, fields = counts, lines = lines,
    text = string.format("%s: fields the %s format does not use, ignored: %s", path, kind, table.concat(parts, ", "))})
end

--- An iterator over the validated examples of a JSONL file; each example gets
-- `line` (its line number).  Errors are "FILE:LINE: message".  Once the file
-- is finished (or the loop left), the fields the format ignored are reported
-- (see on_ignored_fields).
function M.reader(kind, path)
  if not M.checkers[kind] then
    error("unknown data kind " .. tostring(kind) .. " (sft, preference or prompts)", 2)
  end
  if type(path) ~= "string" then error(kind .. ": expected a file path, got " .. type(path), 2) end
  local f, err = io.open(path, "rb")
  if not f then error(kind .. ": cannot open " .. tostring(err), 0) end
  local lineno, closed, counts, examples = 0, false, {}, 0
  local queue, qi = nil, 0   -- the examples a line expanded into (K responses)
  local function close()
    if not closed then
      closed = true
      f:close()
      report_ignored(path, kind, counts, examples)
    end
  end
  local function iter()
    if queue then
      qi = qi + 1
      if queue[qi] then return queue[qi] end
      queue = nil
    end
    if closed then return nil end
    while true do
      local line = f:read("L")
      if line == nil then close(); return nil end
      lineno = lineno + 1
      line = line:gsub("\r?\n$", "")
      if lineno == 1 and line:sub(1, 3) == BOM then line = line:sub(4) end
      if line:find("%S") then
        local ex, msg = M.parse_line(kind, line)
        if not ex then
          closed = true
          f:close()
          error(string.format("%s:%d: %s", path, lineno, msg), 0)
        end
        if ex.expanded then   -- one line: counted once for the report of ignored fields
          for _, e in ipairs(ex.expanded) do e.line = lineno end
          examples = examples + 1
          count_ignored(counts, ex.expanded[1])
          queue, qi = ex.expanded, 1
          return queue[1]
        end
        ex.line = lineno
        examples = examples + 1
        count_ignored(counts, ex)
        return ex
      end
    end
  end
  return iter, nil, nil, setmetatable({}, {__close = close})
end

--- All examples of a file as a list.
function M.load(kind, path)
  local list = {}
  for ex in M.reader(kind, path) do list[#list + 1] = ex end
  return list
end

return M
