--- lualign.jinja: the Jinja template language as Hugging Face chat templates
-- use it, written from Jinja's documentation: a lexer, a parser to a tree,
-- and an evaluator over it.
--
--     local jinja = require "lualign.jinja"
--     local t = jinja.compile("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
--     print(t:render({messages = {{role = "user", content = "hi"}}}))
--
-- The environment is the one transformers renders chat templates with:
-- trim_blocks and lstrip_blocks on, a template's single trailing newline
-- dropped, values printed as Python prints them (True, None, ['a', 1]),
-- `tojson` as Python's json.dumps, the loop-control statements `break` and
-- `continue`, and the `{% generation %}` block that marks what the assistant
-- writes.  A construct outside what is implemented is an error naming it and
-- the template line.  docs/tokenizer.md lists what is covered.

local cjson = require "cjson"

local M = {}

----------------------------------------------------------------------------
-- Values
--
-- Strings, numbers (integer and float kept apart, as Python's int and float)
-- and booleans are Lua's; none and undefined are sentinels; lists and dicts
-- are tables with a metatable (a dict keeps its keys' order in .keys);
-- callables wrap a Lua function f(args, kwargs).

local NONE = setmetatable({}, {__name = "jinja.none"})
local UNDEF = setmetatable({}, {__name = "jinja.undefined"})
local LIST = {__name = "jinja.list"}
local DICT = {__name = "jinja.dict"}
local CALLABLE = {__name = "jinja.callable"}
M.none, M.undefined = NONE, UNDEF

local function new_list(t) return setmetatable(t or {}, LIST) end
local function new_dict() return setmetatable({keys = {}, map = {}}, DICT) end
local function is_list(v) return getmetatable(v) == LIST end
local function is_dict(v) return getmetatable(v) == DICT end
local function is_callable(v) return getmetatable(v) == CALLABLE end
local function callable(f, name) return setmetatable({f = f, name = name}, CALLABLE) end

local function dict_set(d, k, v)
  if d.map[k] == nil then d.keys[#d.keys + 1] = k end
  d.map[k] = v
end

local function dict_get(d, k) return d.map[k] end

--- A Lua value as a template value: tables with only the keys 1..n are
-- lists (an empty table too), other tables dicts (their keys sorted, as Lua
-- keeps no order), cjson.null and nil are none, functions callables, and a
-- float with an integral value an integer (lua-cjson reads every JSON
-- number as a float; JSON's 1 is Python's int).
function M.from_lua(v)
  local ty = type(v)
  if v == nil or v == cjson.null then return NONE end
  if ty == "number" then return math.tointeger(v) or v end
  if ty == "string" or ty == "boolean" then return v end
  if ty == "function" then
    return callable(function(args) return M.from_lua(v(table.unpack(args, 1, args.n or #args))) end)
  end
  if ty ~= "table" then error("chat template: cannot use a " .. ty .. " value", 0) end
  local mt = getmetatable(v)
  if mt == LIST or mt == DICT or mt == CALLABLE or v == NONE or v == UNDEF then return v end
  local n = #v
  local count = 0
  for _ in pairs(v) do count = count + 1 end
  if count == n then
    local l = new_list()
    for i = 1, n do l[i] = M.from_lua(v[i]) end
    return l
  end
  local d = new_dict()
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do dict_set(d, k, M.from_lua(v[k])) end
  return d
end

local function type_name(v)
  if v == NONE then return "none" elseif v == UNDEF then return "undefined"
  elseif is_list(v) then return "list" elseif is_dict(v) then return "dict"
  elseif is_callable(v) then return "callable"
  elseif math.type(v) == "integer" then return "int" elseif math.type(v) == "float" then return "float"
  elseif type(v) == "string" then return "str" elseif type(v) == "boolean" then return "bool" end
  return type(v)
end

local function truthy(v)
  if v == nil or v == false or v == NONE or v == UNDEF or v == 0 or v == "" then return false end
  if is_list(v) then return #v > 0 end
  if is_dict(v) then return #v.keys > 0 end
  return true
end

-- Python's repr of a float: the shortest digits that read back the same,
-- in fixed notation for exponents -4 .. 15, else d.ddde+XX.
local function float_repr(x)
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" elseif x == -math.huge then return "-inf" end
  local s
  for p = 0, 16 do
    s = string.format("%." .. p .. "e", x)
    if tonumber(s) == x then break end
  end
  local sign, int, frac, exp = s:match("^(-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits = (int .. frac):gsub("0+$", "")
  if digits == "" then digits = "0" end
  local e = tonumber(exp)
  if e >= -4 and e < 16 then
    local point = e + 1   -- digits before the point
    local out
    if point <= 0 then
      out = "0." .. string.rep("0", -point) .. digits
    elseif point >= #digits then
      out = digits .. string.rep("0", point - #digits) .. ".0"
    else
      out = digits:sub(1, point) .. "." .. digits:sub(point + 1)
    end
    return sign .. out
  end
  local mant = digits:sub(1, 1) .. (#digits > 1 and ("." .. digits:sub(2)) or "")
  return string.format("%s%se%s%02d", sign, mant, e < 0 and "-" or "+", math.abs(e))
end

local function str_repr(s)
  local q = "'"
  if s:find("'", 1, true) and not s:find('"', 1, true) then q = '"' end
  local body = s:gsub("[\\\n\r\t" .. q .. "%c]", function(c)
    if c == "\\" then return "\\\\" elseif c == "\n" then return "\\n" elseif c == "\r" then return "\\r"
    elseif c == "\t" then return "\\t" elseif c == q then return "\\" .. q end
    return string.format("\\x%02x", c:byte())
  end)
  return q .. body .. q
end

local tostr

local function repr(v)
  if type(v) == "string" then return str_repr(v) end
  return tostr(v)
end

--- What {{ v }} prints: Python's str() of a template value.
tostr = function(v)
  local ty = type(v)
  if ty == "string" then return v end
  if ty == "boolean" then return v and "True" or "False" end
  if math.type(v) == "integer" then return tostring(v) end
  if ty == "number" then return float_repr(v) end
  if v == NONE then return "None" end
  if v == UNDEF then return "" end
  if is_list(v) then
    local parts = {}
    for i = 1, #v do parts[i] = repr(v[i]) end
    if v.tuple then return "(" .. table.concat(parts, ", ") .. (#v == 1 and ",)" or ")") end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  if is_dict(v) then
    local parts = {}
    for i, k in ipairs(v.keys) do parts[i] = repr(k) .. ": " .. repr(v.map[k]) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  if is_callable(v) then return "<function " .. tostring(v.name) .. ">" end
  return tostring(v)
end
M.tostring = tostr

-- JSON as Python's json.dumps(ensure_ascii=False) writes it.
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" elseif c == "\n" then return "\\n"
    elseif c == "\r" then return "\\r" elseif c == "\t" then return "\\t" elseif c == "\b" then return "\\b"
    elseif c == "\f" then return "\\f" end
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function to_json(v, indent, level, where)
  level = level or 0
  if v == NONE or v == UNDEF then return "null" end
  local ty = type(v)
  if ty == "boolean" then return v and "true" or "false" end
  if math.type(v) == "integer" then return tostring(v) end
  if ty == "number" then
    if v ~= v then return "NaN" elseif v == math.huge then return "Infinity" elseif v == -math.huge then return "-Infinity" end
    return float_repr(v)
  end
  if ty == "string" then return json_string(v) end
  local items = {}
  if is_list(v) then
    for i = 1, #v do items[i] = to_json(v[i], indent, level + 1, where) end
  elseif is_dict(v) then
    for i, k in ipairs(v.keys) do
      items[i] = json_string(type(k) == "string" and k or tostr(k)) .. ": " .. to_json(v.map[k], indent, level + 1, where)
    end
  else
    error(where("tojson cannot encode a " .. type_name(v)), 0)
  end
  local open, close = is_list(v) and "[" or "{", is_list(v) and "]" or "}"
  if #items == 0 then return open .. close end
  if not indent then return open .. table.concat(items, ", ") .. close end
  local pad, inner = string.rep(" ", indent * level), string.rep(" ", indent * (level + 1))
  return open .. "\n" .. inner .. table.concat(items, ",\n" .. inner) .. "\n" .. pad .. close
end

-- Characters of a string (code points; bytes of invalid UTF-8 one by one).
local function chars(s)
  local out = {}
  if not s:find("[\128-\255]") then
    for i = 1, #s do out[i] = s:sub(i, i) end
    return out
  end
  local i = 1
  while i <= #s do
    local ok, nxt = pcall(utf8.offset, s, 2, i)
    if not ok or not nxt or not utf8.len(s, i, nxt - 1) then nxt = i + 1 end
    out[#out + 1] = s:sub(i, nxt - 1)
    i = nxt
  end
  return out
end

local function equal(a, b)
  if a == b then return true end
  if is_list(a) and is_list(b) then
    if #a ~= #b then return false end
    for i = 1, #a do if not equal(a[i], b[i]) then return false end end
    return true
  end
  if is_dict(a) and is_dict(b) then
    if #a.keys ~= #b.keys then return false end
    for _, k in ipairs(a.keys) do
      if b.map[k] == nil or not equal(a.map[k], b.map[k]) then return false end
    end
    return true
  end
  return false
end

----------------------------------------------------------------------------
-- Lexing: the template into text and tags, with Jinja's whitespace rules

local Template = {}
Template.__index = Template

local function line_of(src, pos)
  local n = 1
  for _ in src:sub(1, pos - 1):gmatch("\n") do n = n + 1 end
  return n
end

-- Chunks: {kind = "text" | "var" | "block", src, line}.  Jinja's rules:
-- "-" inside a delimiter strips the whitespace on that side; trim_blocks
-- drops the newline right after a block or comment tag; lstrip_blocks
-- drops the spaces and tabs between the start of a line and a block or
-- comment tag ("+" turns either off for that tag).
local function split_template(src)
  if src:sub(-1) == "\n" then src = src:sub(1, -2) end   -- keep_trailing_newline off
  local chunks = {}
  local pos, n = 1, #src
  while pos <= n do
    local s = src:find("{[{%%#]", pos)
    local text = src:sub(pos, (s or n + 1) - 1)
    if not s then
      if text ~= "" then chunks[#chunks + 1] = {kind = "text", src = text} end
      break
    end
    local open = src:sub(s, s + 1)
    local close = open == "{{" and "}}" or open == "{%" and "%}" or "#}"
    local mod = src:sub(s + 2, s + 2)
    if mod == "-" then
      text = text:gsub("%s+$", "")
    elseif open ~= "{{" and mod ~= "+" then
      local nl = text:match(".*()\n")
      local from = nl and nl + 1 or 1
      local line_starting = pos == 1 or src:sub(pos - 1, pos - 1) == "\n"
      if (nl or line_starting) and text:sub(from):match("^[ \t]*$") then text = text:sub(1, from - 1) end
    end
    if text ~= "" then chunks[#chunks + 1] = {kind = "text", src = text} end
    local line = line_of(src, s)
    local body_start = s + 2 + ((mod == "-" or mod == "+") and 1 or 0)
    local e
    if open == "{#" then
      e = src:find("#}", body_start, true)
      if not e then error(string.format("chat template line %d: unclosed comment {#", line), 0) end
    else
      local i, quote = body_start, nil   -- the closing delimiter, outside string literals
      while i <= n do
        local c = src:sub(i, i)
        if quote then
          if c == "\\" then i = i + 1 elseif c == quote then quote = nil end
        elseif c == "'" or c == '"' then
          quote = c
        elseif src:sub(i, i + 1) == close then
          e = i
          break
        end
        i = i + 1
      end
      if not e then error(string.format("chat template line %d: unclosed %s ... %s", line, open, close), 0) end
    end
    local body = src:sub(body_start, e - 1)
    local rmod = body:sub(-1)
    if rmod == "-" or (rmod == "+" and open ~= "{{") then body = body:sub(1, -2) end
    pos = e + 2
    local function after_tag()
      if rmod == "-" then
        pos = src:find("[^%s]", pos) or n + 1
      elseif open ~= "{{" and rmod ~= "+" then
        if src:sub(pos, pos) == "\n" then pos = pos + 1 elseif src:sub(pos, pos + 1) == "\r\n" then pos = pos + 2 end
      end
    end
    after_tag()
    if open == "{{" then
      chunks[#chunks + 1] = {kind = "var", src = body, line = line}
    elseif open == "{%" then
      if body:match("^%s*raw%s*$") then   -- {% raw %} ... {% endraw %} is text
        local rs, re_ = src:find("{%%[-+]?%s*endraw%s*[-+]?%%}", pos)
        if not rs then error(string.format("chat template line %d: {%% raw %%} without {%% endraw %%}", line), 0) end
        local raw = src:sub(pos, rs - 1)
        if src:sub(rs + 2, rs + 2) == "-" then raw = raw:gsub("%s+$", "") end
        if raw ~= "" then chunks[#chunks + 1] = {kind = "text", src = raw} end
        rmod = src:sub(re_ - 2, re_ - 2)
        pos = re_ + 1
        after_tag()
      else
        chunks[#chunks + 1] = {kind = "block", src = body, line = line}
      end
    end
  end
  return chunks
end

-- Tokens of an expression: {t = "name" | "str" | "num" | "op", v}.
local OPS = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]",
  "{", "}", ",", ":", ".", "|", "="}

local ESCAPES = {n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"', ["0"] = "\0", b = "\b", f = "\f"}

local function tokenize(s, line)
  local toks, i, n = {}, 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif c:match("[%a_]") then
      local w = s:match("^[%w_]+", i)
      toks[#toks + 1] = {t = "name", v = w}
      i = i + #w
    elseif c:match("%d") then
      local num = s:match("^%d[%d_]*%.%d[%d_]*[eE][-+]?%d+", i) or s:match("^%d[%d_]*%.%d[%d_]*", i)
        or s:match("^%d[%d_]*[eE][-+]?%d+", i)
      if num then
        toks[#toks + 1] = {t = "num", v = tonumber((num:gsub("_", ""))) + 0.0}
      else
        num = s:match("^%d[%d_]*", i)
        toks[#toks + 1] = {t = "num", v = math.tointeger(tonumber((num:gsub("_", ""))))}
      end
      i = i + #num
    elseif c == "'" or c == '"' then
      local buf, j = {}, i + 1
      while true do
        if j > n then error(string.format("chat template line %d: unterminated string", line), 0) end
        local d = s:sub(j, j)
        if d == c then break end
        if d == "\\" then
          local e = s:sub(j + 1, j + 1)
          if e == "u" or e == "x" or e == "U" then
            local len = e == "x" and 2 or e == "u" and 4 or 8
            local hex = s:sub(j + 2, j + 1 + len)
            buf[#buf + 1] = utf8.char(tonumber(hex, 16))
            j = j + 2 + len
          else
            buf[#buf + 1] = ESCAPES[e] or ("\\" .. e)
            j = j + 2
          end
        else
          buf[#buf + 1] = d
          j = j + 1
        end
      end
      toks[#toks + 1] = {t = "str", v = table.concat(buf)}
      i = j + 1
    else
      local op
      for _, o in ipairs(OPS) do
        if s:sub(i, i + #o - 1) == o then op = o; break end
      end
      if not op then error(string.format("chat template line %d: unexpected character %q", line, c), 0) end
      toks[#toks + 1] = {t = "op", v = op}
      i = i + #op
    end
  end
  return toks
end

----------------------------------------------------------------------------
-- Parsing expressions

local Parser = {}
Parser.__index = Parser

local function new_parser(toks, line)
  return setmetatable({toks = toks, i = 1, line = line}, Parser)
end

function Parser:err(msg) error(string.format("chat template line %d: %s", self.line, msg), 0) end
function Parser:peek(k) return self.toks[self.i + (k or 0)] end
function Parser:next() local t = self.toks[self.i]; self.i = self.i + 1; return t end
function Parser:is(t, v, k)
  local tok = self.toks[self.i + (k or 0)]
  return tok and tok.t == t and (v == nil or tok.v == v)
end
function Parser:accept(t, v) if self:is(t, v) then return self:next() end end
function Parser:expect(t, v)
  local tok = self:next()
  if not tok or tok.t ~= t or (v and tok.v ~= v) then
    self:err(string.format("expected %s, found %s", v or t, tok and tostring(tok.v) or "the end of the tag"))
  end
  return tok
end
function Parser:done() return self.i > #self.toks end

local RESERVED_STOP = {["and"] = true, ["or"] = true, ["else"] = true, ["if"] = true, ["in"] = true, ["is"] = true,
  ["not"] = true, ["recursive"] = true}

function Parser:expression(no_cond)
  local e = self:or_expr()
  if not no_cond and self:is("name", "if") then
    self:next()
    local cond = self:or_expr()
    local other = nil
    if self:accept("name", "else") then other = self:expression() end
    e = {k = "cond", cond = cond, a = e, b = other}
  end
  return e
end

function Parser:or_expr()
  local e = self:and_expr()
  while self:accept("name", "or") do e = {k = "or", a = e, b = self:and_expr()} end
  return e
end

function Parser:and_expr()
  local e = self:not_expr()
  while self:accept("name", "and") do e = {k = "and", a = e, b = self:not_expr()} end
  return e
end

function Parser:not_expr()
  if self:accept("name", "not") then return {k = "not", a = self:not_expr()} end
  return self:compare()
end

local CMP = {["=="] = true, ["!="] = true, ["<"] = true, [">"] = true, ["<="] = true, [">="] = true}

function Parser:compare()
  local e = self:math1()
  while true do
    if self:is("op") and CMP[self:peek().v] then
      local op = self:next().v
      e = {k = "bin", op = op, a = e, b = self:math1()}
    elseif self:is("name", "in") then
      self:next()
      e = {k = "bin", op = "in", a = e, b = self:math1()}
    elseif self:is("name", "not") and self:is("name", "in", 1) then
      self:next(); self:next()
      e = {k = "not", a = {k = "bin", op = "in", a = e, b = self:math1()}}
    else
      return e
    end
  end
end

function Parser:math1()
  local e = self:concat()
  while self:is("op", "+") or self:is("op", "-") do
    local op = self:next().v
    e = {k = "bin", op = op, a = e, b = self:concat()}
  end
  return e
end

function Parser:concat()
  local e = self:math2()
  while self:accept("op", "~") do e = {k = "bin", op = "~", a = e, b = self:math2()} end
  return e
end

function Parser:math2()
  local e = self:pow()
  while self:is("op", "*") or self:is("op", "/") or self:is("op", "//") or self:is("op", "%") do
    local op = self:next().v
    e = {k = "bin", op = op, a = e, b = self:pow()}
  end
  return e
end

function Parser:pow()
  local e = self:unary()
  while self:accept("op", "**") do e = {k = "bin", op = "**", a = e, b = self:unary()} end
  return e
end

function Parser:unary(no_filter)
  if self:accept("op", "-") then
    local e = {k = "neg", a = self:unary(true)}
    return no_filter and e or self:filters(e)
  end
  if self:accept("op", "+") then return self:unary(no_filter) end
  local e = self:postfix(self:primary())
  if no_filter then return e end
  return self:filters(e)
end

-- Arguments of a call: positional and keyword.
function Parser:call_args()
  local args, kwargs = {}, {}
  if self:accept("op", ")") then return args, kwargs end
  repeat
    if self:is("op", ")") then break end
    if self:is("name") and self:is("op", "=", 1) then
      local name = self:next().v
      self:next()
      kwargs[#kwargs + 1] = {name, self:expression()}
    else
      args[#args + 1] = self:expression()
    end
  until not self:accept("op", ",")
  self:expect("op", ")")
  return args, kwargs
end

function Parser:filters(e)
  while true do
    if self:accept("op", "|") then
      local name = self:expect("name").v
      while self:accept("op", ".") do name = name .. "." .. self:expect("name").v end
      local args, kwargs = {}, {}
      if self:accept("op", "(") then args, kwargs = self:call_args() end
      e = {k = "filter", name = name, a = e, args = args, kwargs = kwargs, line = self.line}
    elseif self:is("name", "is") then
      self:next()
      local neg = self:accept("name", "not") ~= nil
      local name = self:expect("name").v
      local args, kwargs = {}, {}
      if self:accept("op", "(") then
        args, kwargs = self:call_args()
      elseif self:peek() and (self:is("str") or self:is("num") or (self:is("name") and not RESERVED_STOP[self:peek().v])) then
        args = {self:unary(true)}
      end
      e = {k = "test", name = name, a = e, args = args, kwargs = kwargs, neg = neg, line = self.line}
    else
      return e
    end
  end
end

function Parser:postfix(e)
  while true do
    if self:accept("op", ".") then
      local tok = self:next()
      if not tok or (tok.t ~= "name" and tok.t ~= "num") then self:err("expected an attribute name after '.'") end
      e = {k = "attr", a = e, name = tok.v}
    elseif self:accept("op", "[") then
      local parts, colon = {}, 0
      local cur = nil
      while not self:is("op", "]") do
        if self:accept("op", ":") then
          parts[colon + 1] = cur
          colon = colon + 1
          cur = nil
        else
          cur = self:expression()
        end
        if not self:peek() then self:err("unclosed [") end
      end
      self:expect("op", "]")
      if colon == 0 then
        if not cur then self:err("empty subscript []") end
        e = {k = "item", a = e, key = cur}
      else
        parts[colon + 1] = cur
        if colon > 2 then self:err("a slice has at most two ':'") end
        e = {k = "slice", a = e, start = parts[1], stop = parts[2], step = parts[3]}
      end
    elseif self:accept("op", "(") then
      local args, kwargs = self:call_args()
      e = {k = "call", fn = e, args = args, kwargs = kwargs, line = self.line}
    else
      return e
    end
  end
end

local LITERAL_NAMES = {["true"] = true, ["True"] = true, ["false"] = false, ["False"] = false}

function Parser:primary()
  local tok = self:next()
  if not tok then self:err("expected an expression, found the end of the tag") end
  if tok.t == "str" then
    local v = tok.v
    while self:is("str") do v = v .. self:next().v end   -- adjacent literals join
    return {k = "lit", v = v}
  end
  if tok.t == "num" then return {k = "lit", v = tok.v} end
  if tok.t == "name" then
    if LITERAL_NAMES[tok.v] ~= nil then return {k = "lit", v = LITERAL_NAMES[tok.v]} end
    if tok.v == "none" or tok.v == "None" then return {k = "lit", v = NONE} end
    return {k = "name", name = tok.v}
  end
  if tok.v == "(" then
    if self:accept("op", ")") then return {k = "tuple", items = {}} end
    local e = self:expression()
    if self:accept("op", ",") then
      local items = {e}
      while not self:is("op", ")") do
        items[#items + 1] = self:expression()
        if not self:accept("op", ",") then break end
      end
      self:expect("op", ")")
      return {k = "tuple", items = items}
    end
    self:expect("op", ")")
    return e
  end
  if tok.v == "[" then
    local items = {}
    while not self:is("op", "]") do
      items[#items + 1] = self:expression()
      if not self:accept("op", ",") then break end
    end
    self:expect("op", "]")
    return {k = "list", items = items}
  end
  if tok.v == "{" then
    local pairs_ = {}
    while not self:is("op", "}") do
      local key = self:expression()
      self:expect("op", ":")
      pairs_[#pairs_ + 1] = {key, self:expression()}
      if not self:accept("op", ",") then break end
    end
    self:expect("op", "}")
    return {k = "dict", pairs = pairs_}
  end
  self:err(string.format("unexpected '%s'", tostring(tok.v)))
end

-- Assignment targets: a name, ns.attr, or names separated by commas.
function Parser:target()
  local names = {}
  repeat
    local name = self:expect("name").v
    if self:accept("op", ".") then
      return {k = "attr_target", obj = name, attr = self:expect("name").v}
    end
    names[#names + 1] = name
  until not self:accept("op", ",")
  if #names == 1 then return {k = "name_target", name = names[1]} end
  return {k = "tuple_target", names = names}
end

----------------------------------------------------------------------------
-- Parsing statements

local function parse_expr_src(src, line)
  local p = new_parser(tokenize(src, line), line)
  local e = p:expression()
  if not p:done() then p:err(string.format("unexpected '%s' after the expression", tostring(p:peek().v))) end
  return e
end

local SUPPORTED = "if, elif, else, for, set, macro, generation, break, continue, filter, raw"

-- Parses chunks[i..] until a block tag whose name is in `stops`; returns
-- the body, the index of that tag, and its name.
local function parse_body(chunks, i, stops, opener)
  local body = {}
  while i <= #chunks do
    local c = chunks[i]
    if c.kind == "text" then
      body[#body + 1] = {k = "text", v = c.src}
      i = i + 1
    elseif c.kind == "var" then
      body[#body + 1] = {k = "output", e = parse_expr_src(c.src, c.line), line = c.line}
      i = i + 1
    else
      local p = new_parser(tokenize(c.src, c.line), c.line)
      local name = p:expect("name").v
      if stops and stops[name] then return body, i, name, p end
      local node
      node, i = M._statement(chunks, i, name, p, c.line)
      body[#body + 1] = node
    end
  end
  if opener then
    error(string.format("chat template line %d: {%% %s %%} is not closed", opener.line, opener.name), 0)
  end
  return body, i
end

function M._statement(chunks, i, name, p, line)
  if name == "if" then
    local node = {k = "if", branches = {}, line = line}
    local cond = p:expression()
    while true do
      local body, j, stop, q = parse_body(chunks, i + 1, {elif = true, ["else"] = true, endif = true},
        {line = line, name = "if"})
      node.branches[#node.branches + 1] = {cond = cond, body = body}
      i = j
      if stop == "endif" then return node, i + 1 end
      if stop == "else" then
        local body2, j2 = parse_body(chunks, i + 1, {endif = true}, {line = line, name = "if"})
        node.else_body = body2
        return node, j2 + 1
      end
      cond = q:expression()
    end
  elseif name == "for" then
    local target = p:target()
    p:expect("name", "in")
    local iter = p:expression(true)
    local filter
    if p:accept("name", "if") then filter = p:expression(true) end
    if p:accept("name", "recursive") then p:err("unsupported construct: recursive for loops") end
    if not p:done() then p:err("unexpected '" .. tostring(p:peek().v) .. "' in for") end
    local body, j, stop = parse_body(chunks, i + 1, {["else"] = true, endfor = true}, {line = line, name = "for"})
    local node = {k = "for", target = target, iter = iter, filter = filter, body = body, line = line}
    if stop == "else" then
      local body2, j2 = parse_body(chunks, j + 1, {endfor = true}, {line = line, name = "for"})
      node.else_body = body2
      j = j2
    end
    return node, j + 1
  elseif name == "set" then
    local target = p:target()
    if p:accept("op", "=") then
      local e = p:expression()
      if not p:done() then p:err("unexpected '" .. tostring(p:peek().v) .. "' in set") end
      return {k = "set", target = target, e = e, line = line}, i + 1
    end
    local filters = nil
    if p:is("op", "|") then filters = p end
    local body, j = parse_body(chunks, i + 1, {endset = true}, {line = line, name = "set"})
    return {k = "setblock", target = target, body = body, filters = filters and p:filters({k = "lit", v = ""}),
      line = line}, j + 1
  elseif name == "macro" then
    local mname = p:expect("name").v
    p:expect("op", "(")
    local params = {}
    while not p:is("op", ")") do
      local pname = p:expect("name").v
      local default
      if p:accept("op", "=") then default = p:expression() end
      params[#params + 1] = {name = pname, default = default}
      if not p:accept("op", ",") then break end
    end
    p:expect("op", ")")
    local body, j = parse_body(chunks, i + 1, {endmacro = true}, {line = line, name = "macro"})
    return {k = "macro", name = mname, params = params, body = body, line = line}, j + 1
  elseif name == "generation" then
    local body, j = parse_body(chunks, i + 1, {endgeneration = true}, {line = line, name = "generation"})
    return {k = "generation", body = body, line = line}, j + 1
  elseif name == "filter" then
    local f = p:filters({k = "lit", v = ""})
    local body, j = parse_body(chunks, i + 1, {endfilter = true}, {line = line, name = "filter"})
    return {k = "filterblock", f = f, body = body, line = line}, j + 1
  elseif name == "break" or name == "continue" then
    return {k = name, line = line}, i + 1
  elseif name == "elif" or name == "else" or name:match("^end") then
    error(string.format("chat template line %d: {%% %s %%} without an opening tag", line, name), 0)
  end
  error(string.format("chat template line %d: unsupported construct {%% %s %%} (supported: %s)", line, name,
    SUPPORTED), 0)
end

--- Compiles a template source; errors name the construct and the line.
function M.compile(src)
  if type(src) ~= "string" then error("jinja.compile: the template must be a string", 2) end
  local chunks = split_template(src)
  local body = parse_body(chunks, 1, nil, nil)
  return setmetatable({body = body, src = src}, Template)
end

----------------------------------------------------------------------------
-- Evaluation

local BREAK, CONTINUE = {}, {}

local function new_frame(parent) return {vars = {}, parent = parent} end
local function lookup(frame, name)
  while frame do
    local v = frame.vars[name]
    if v ~= nil then return v end
    frame = frame.parent
  end
  return UNDEF
end

local Renderer = {}
Renderer.__index = Renderer

function Renderer:err(line, msg) error(string.format("chat template line %d: %s", line or 0, msg), 0) end

function Renderer:emit(s)
  if s == "" then return end
  local out = self.out
  out[#out + 1] = s
  self.len = self.len + #s
end

-- Attribute access: for dicts, the methods items/keys/values/get win over keys
-- (as Python's getattr comes first), then the key; strings and lists have methods.
local STR_METHODS, DICT_METHODS = {}, {}

local function getattr(self, obj, name, line)
  if obj == UNDEF then self:err(line, string.format("cannot read attribute '%s' of an undefined value", name)) end
  if is_dict(obj) then
    if DICT_METHODS[name] then return callable(function(args, kw) return DICT_METHODS[name](self, obj, args, kw, line) end, name) end
    local v = dict_get(obj, name)
    if v == nil then return UNDEF end
    return v
  end
  if type(obj) == "string" and STR_METHODS[name] then
    return callable(function(args, kw) return STR_METHODS[name](self, obj, args, kw, line) end, name)
  end
  if is_list(obj) and math.tointeger(name) then
    local v = obj[math.tointeger(name) + 1]
    return v == nil and UNDEF or v
  end
  if obj == NONE then self:err(line, string.format("cannot read attribute '%s' of None", name)) end
  return UNDEF
end

local function getitem(self, obj, key, line)
  if is_dict(obj) then
    local v = dict_get(obj, key)
    if v == nil then
      if type(key) == "string" and DICT_METHODS[key] then return getattr(self, obj, key, line) end
      return UNDEF
    end
    return v
  end
  if is_list(obj) or type(obj) == "string" then
    if math.type(key) ~= "integer" then
      if type(key) == "string" then return getattr(self, obj, key, line) end
      self:err(line, string.format("a %s index must be an integer, not %s", type_name(obj), type_name(key)))
    end
    local seq = is_list(obj) and obj or chars(obj)
    local n = #seq
    local i = key < 0 and n + key or key
    if i < 0 or i >= n then return UNDEF end
    return seq[i + 1]
  end
  if obj == UNDEF then self:err(line, "cannot index an undefined value") end
  if obj == NONE then self:err(line, "cannot index None") end
  return UNDEF
end

-- Python's slice semantics.
local function slice(self, obj, a, b, c, line)
  local is_str = type(obj) == "string"
  if not is_str and not is_list(obj) then self:err(line, "cannot slice a " .. type_name(obj)) end
  local seq = is_str and chars(obj) or obj
  local n = #seq
  local step = c == nil and 1 or c
  if math.type(step) ~= "integer" or step == 0 then self:err(line, "a slice step must be a non-zero integer") end
  local function norm(v, dflt_pos, dflt_neg)
    if v == nil then return step > 0 and dflt_pos or dflt_neg end
    if math.type(v) ~= "integer" then self:err(line, "slice bounds must be integers") end
    if v < 0 then v = v + n end
    if step > 0 then return math.max(0, math.min(v, n)) end
    return math.max(-1, math.min(v, n - 1))
  end
  local start, stop = norm(a, 0, n - 1), norm(b, n, -1)
  local out = {}
  local i = start
  while (step > 0 and i < stop) or (step < 0 and i > stop) do
    out[#out + 1] = seq[i + 1]
    i = i + step
  end
  if is_str then return table.concat(out) end
  return new_list(out)
end

local function num_check(self, a, b, op, line)
  if type(a) ~= "number" or type(b) ~= "number" then
    self:err(line, string.format("unsupported operand types for %s: %s and %s", op, type_name(a), type_name(b)))
  end
end

local function contains(self, container, item, line)
  if type(container) == "string" then
    if type(item) ~= "string" then self:err(line, "'in <string>' needs a string on the left, not " .. type_name(item)) end
    return container:find(item, 1, true) ~= nil
  end
  if is_list(container) then
    for i = 1, #container do if equal(container[i], item) then return true end end
    return false
  end
  if is_dict(container) then return container.map[item] ~= nil end
  if container == UNDEF then self:err(line, "'in' on an undefined value") end
  self:err(line, "'in' needs a string, list or dict on the right, not " .. type_name(container))
end

local function binop(self, op, a, b, line)
  if op == "~" then return tostr(a) .. tostr(b) end
  if op == "==" then return equal(a, b) end
  if op == "!=" then return not equal(a, b) end
  if op == "in" then return contains(self, b, a, line) end
  if op == "+" then
    if type(a) == "string" and type(b) == "string" then return a .. b end
    if is_list(a) and is_list(b) then
      local out = new_list()
      for i = 1, #a do out[#out + 1] = a[i] end
      for i = 1, #b do out[#out + 1] = b[i] end
      return out
    end
    num_check(self, a, b, op, line)
    return a + b
  end
  if op == "*" then
    if type(a) == "string" and math.type(b) == "integer" then return string.rep(a, math.max(b, 0)) end
    if is_list(a) and math.type(b) == "integer" then
      local out = new_list()
      for _ = 1, b do for i = 1, #a do out[#out + 1] = a[i] end end
      return out
    end
    num_check(self, a, b, op, line)
    return a * b
  end
  if op == "<" or op == ">" or op == "<=" or op == ">=" then
    if not ((type(a) == "number" and type(b) == "number") or (type(a) == "string" and type(b) == "string")) then
      self:err(line, string.format("cannot compare %s %s %s", type_name(a), op, type_name(b)))
    end
    if op == "<" then return a < b elseif op == ">" then return a > b elseif op == "<=" then return a <= b end
    return a >= b
  end
  num_check(self, a, b, op, line)
  if op == "-" then return a - b end
  if op == "/" then
    if b == 0 then self:err(line, "division by zero") end
    return a / b
  end
  if op == "//" then
    if b == 0 then self:err(line, "division by zero") end
    return a // b
  end
  if op == "%" then
    if b == 0 then self:err(line, "modulo by zero") end
    return a % b
  end
  if op == "**" then
    if math.type(a) == "integer" and math.type(b) == "integer" and b >= 0 then
      local r = 1
      for _ = 1, b do r = r * a end
      return r
    end
    return a ^ b
  end
  self:err(line, "unknown operator " .. op)
end

local FILTERS, TESTS, GLOBALS = {}, {}, {}

function Renderer:eval(e, f)
  local k = e.k
  if k == "lit" then return e.v end
  if k == "name" then
    local v = lookup(f, e.name)
    if v == UNDEF and GLOBALS[e.name] then return GLOBALS[e.name] end
    return v
  end
  if k == "attr" then return getattr(self, self:eval(e.a, f), e.name, e.line or self.line) end
  if k == "item" then return getitem(self, self:eval(e.a, f), self:eval(e.key, f), self.line) end
  if k == "slice" then
    local function opt(x) if x == nil then return nil end local v = self:eval(x, f); return v ~= NONE and v or nil end
    return slice(self, self:eval(e.a, f), opt(e.start), opt(e.stop), opt(e.step), self.line)
  end
  if k == "bin" then return binop(self, e.op, self:eval(e.a, f), self:eval(e.b, f), self.line) end
  if k == "and" then
    local a = self:eval(e.a, f)
    if not truthy(a) then return a end
    return self:eval(e.b, f)
  end
  if k == "or" then
    local a = self:eval(e.a, f)
    if truthy(a) then return a end
    return self:eval(e.b, f)
  end
  if k == "not" then return not truthy(self:eval(e.a, f)) end
  if k == "neg" then
    local a = self:eval(e.a, f)
    if type(a) ~= "number" then self:err(self.line, "cannot negate a " .. type_name(a)) end
    return -a
  end
  if k == "cond" then
    if truthy(self:eval(e.cond, f)) then return self:eval(e.a, f) end
    if e.b then return self:eval(e.b, f) end
    return UNDEF
  end
  if k == "list" or k == "tuple" then
    local out = new_list()
    for i, item in ipairs(e.items) do out[i] = self:eval(item, f) end
    if k == "tuple" then out.tuple = true end
    return out
  end
  if k == "dict" then
    local d = new_dict()
    for _, p in ipairs(e.pairs) do dict_set(d, self:eval(p[1], f), self:eval(p[2], f)) end
    return d
  end
  if k == "call" then
    local fn = self:eval(e.fn, f)
    local args, kw = self:eval_args(e, f)
    if not is_callable(fn) then
      local what = e.fn.k == "name" and ("'" .. e.fn.name .. "'") or e.fn.k == "attr" and ("'" .. e.fn.name .. "'") or "this"
      self:err(e.line, string.format("%s is not callable (it is %s)", what, type_name(fn)))
    end
    return fn.f(args, kw)
  end
  if k == "filter" then
    local fn = FILTERS[e.name]
    if not fn then self:err(e.line, string.format("unsupported filter '%s'", e.name)) end
    local args, kw = self:eval_args(e, f)
    return fn(self, self:eval(e.a, f), args, kw, e.line)
  end
  if k == "test" then
    local fn = TESTS[e.name]
    if not fn then self:err(e.line, string.format("unsupported test '%s'", e.name)) end
    local args = self:eval_args(e, f)
    local r = fn(self, self:eval(e.a, f), args, e.line)
    if e.neg then return not r end
    return r
  end
  self:err(self.line, "unsupported expression " .. tostring(k))
end

function Renderer:eval_args(e, f)
  local args, kw = {n = #e.args}, {}
  for i, a in ipairs(e.args) do args[i] = self:eval(a, f) end
  for _, p in ipairs(e.kwargs or {}) do kw[p[1]] = self:eval(p[2], f) end
  return args, kw
end

-- Iterating a value: lists, dict keys, string characters; undefined is empty.
local function iterate(self, v, line)
  if is_list(v) then return v end
  if is_dict(v) then return new_list({table.unpack(v.keys)}) end
  if type(v) == "string" then return new_list(chars(v)) end
  if v == UNDEF then return new_list() end
  self:err(line, "cannot iterate over a " .. type_name(v))
end

local function assign(self, target, value, f, line)
  if target.k == "name_target" then
    f.vars[target.name] = value
  elseif target.k == "tuple_target" then
    local seq = iterate(self, value, line)
    if #seq ~= #target.names then
      self:err(line, string.format("cannot unpack %d values into %d names", #seq, #target.names))
    end
    for i, n in ipairs(target.names) do f.vars[n] = seq[i] end
  else
    local obj = lookup(f, target.obj)
    if not (is_dict(obj) and obj.namespace) then
      self:err(line, string.format("cannot set attribute '%s' of '%s': only a namespace() takes attributes",
        target.attr, target.obj))
    end
    dict_set(obj, target.attr, value)
  end
end

function Renderer:exec(body, f)
  for _, node in ipairs(body) do
    local k = node.k
    if node.line then self.line = node.line end
    if k == "text" then
      self:emit(node.v)
    elseif k == "output" then
      self:emit(tostr(self:eval(node.e, f)))
    elseif k == "if" then
      local done = false
      for _, br in ipairs(node.branches) do
        self.line = node.line
        if truthy(self:eval(br.cond, f)) then
          local r = self:exec(br.body, f)
          if r then return r end
          done = true
          break
        end
      end
      if not done and node.else_body then
        local r = self:exec(node.else_body, f)
        if r then return r end
      end
    elseif k == "for" then
      self:exec_for(node, f)
    elseif k == "set" then
      assign(self, node.target, self:eval(node.e, f), f, node.line)
    elseif k == "setblock" then
      local saved, savedlen = self.out, self.len
      self.out, self.len = {}, 0
      self:exec(node.body, f)
      local text = table.concat(self.out)
      self.out, self.len = saved, savedlen
      if node.filters then text = self:apply_filter_chain(node.filters, text, f) end
      assign(self, node.target, text, f, node.line)
    elseif k == "macro" then
      f.vars[node.name] = self:make_macro(node, f)
    elseif k == "generation" then
      local start = self.len
      local r = self:exec(node.body, f)
      self.generation[#self.generation + 1] = {start, self.len}
      if r then return r end
    elseif k == "filterblock" then
      local saved, savedlen = self.out, self.len
      self.out, self.len = {}, 0
      self:exec(node.body, f)
      local text = table.concat(self.out)
      self.out, self.len = saved, savedlen
      self:emit(tostr(self:apply_filter_chain(node.f, text, f)))
    elseif k == "break" then
      return BREAK
    elseif k == "continue" then
      return CONTINUE
    end
  end
end

-- A filter chain parsed onto a placeholder literal, applied to value.
function Renderer:apply_filter_chain(chain, value, f)
  local function run(e)
    if e.k == "lit" then return value end
    local fn = FILTERS[e.name]
    if not fn then self:err(e.line, string.format("unsupported filter '%s'", e.name)) end
    local args, kw = self:eval_args(e, f)
    return fn(self, run(e.a), args, kw, e.line)
  end
  return run(chain)
end

function Renderer:exec_for(node, f)
  local seq = iterate(self, self:eval(node.iter, f), node.line)
  local items = seq
  if node.filter then
    items = {}
    for _, v in ipairs(seq) do
      local lf = new_frame(f)
      assign(self, node.target, v, lf, node.line)
      if truthy(self:eval(node.filter, lf)) then items[#items + 1] = v end
    end
  end
  local n = #items
  if n == 0 then
    if node.else_body then self:exec(node.else_body, f) end
    return
  end
  local loop = new_dict()
  dict_set(loop, "length", n)
  dict_set(loop, "cycle", callable(function(args)
    if args.n == 0 then self:err(node.line, "loop.cycle needs at least one value") end
    return args[(loop.map.index0 % args.n) + 1]
  end, "cycle"))
  for i, v in ipairs(items) do
    dict_set(loop, "index", i)
    dict_set(loop, "index0", i - 1)
    dict_set(loop, "revindex", n - i + 1)
    dict_set(loop, "revindex0", n - i)
    dict_set(loop, "first", i == 1)
    dict_set(loop, "last", i == n)
    dict_set(loop, "previtem", i > 1 and items[i - 1] or UNDEF)
    dict_set(loop, "nextitem", i < n and items[i + 1] or UNDEF)
    -- a fresh scope per iteration: a set inside the loop does not leak out
    local lf = new_frame(f)
    lf.vars.loop = loop
    assign(self, node.target, v, lf, node.line)
    local r = self:exec(node.body, lf)
    if r == BREAK then break end
  end
end

function Renderer:make_macro(node, defining)
  local renderer = self
  return callable(function(args, kw)
    local mf = new_frame(defining)
    for i, p in ipairs(node.params) do
      local v = args[i]
      if v == nil then v = kw[p.name] end
      if v == nil then v = p.default and renderer:eval(p.default, mf) or UNDEF end
      mf.vars[p.name] = v
    end
    local saved, savedlen = renderer.out, renderer.len
    renderer.out, renderer.len = {}, 0
    renderer:exec(node.body, mf)
    local text = table.concat(renderer.out)
    renderer.out, renderer.len = saved, savedlen
    return text
  end, node.name)
end

--- Renders with a context (a Lua table; see M.from_lua).  Returns the text
-- and a table {generation = {{start, stop}, ...}}: the byte ranges (0-based
-- start, exclusive stop) that {% generation %} blocks wrote.
-- raise_exception(msg) in a template raises "chat template: msg".
function Template:render(context)
  local r = setmetatable({out = {}, len = 0, generation = {}, line = 1}, Renderer)
  local root = new_frame(nil)
  for k, v in pairs(context or {}) do root.vars[k] = M.from_lua(v) end
  local ok, err = pcall(r.exec, r, self.body, root)
  if not ok then
    if type(err) == "table" and err.jinja_raise then error("chat template: " .. err.jinja_raise, 0) end
    error(err, 0)
  end
  return table.concat(r.out), {generation = r.generation}
end

--- Compiles and renders in one call.
function M.render(src, context)
  return M.compile(src):render(context)
end

----------------------------------------------------------------------------
-- Globals

GLOBALS.raise_exception = callable(function(args)
  error({jinja_raise = tostr(args[1] == nil and "" or args[1])}, 0)
end, "raise_exception")

GLOBALS.range = callable(function(args)
  local a, b, c = args[1], args[2], args[3]
  if b == nil then a, b = 0, a end
  c = c or 1
  if math.type(a) ~= "integer" or math.type(b) ~= "integer" or math.type(c) ~= "integer" or c == 0 then
    error("chat template: range() takes integers (and a non-zero step)", 0)
  end
  local out = new_list()
  for i = a, b - (c > 0 and 1 or -1), c do out[#out + 1] = i end
  return out
end, "range")

GLOBALS.namespace = callable(function(args, kw)
  local d = new_dict()
  d.namespace = true
  if is_dict(args[1]) then for _, k in ipairs(args[1].keys) do dict_set(d, k, args[1].map[k]) end end
  local keys = {}
  for k in pairs(kw) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do dict_set(d, k, kw[k]) end
  return d
end, "namespace")

GLOBALS.dict = callable(function(args, kw)
  local d = new_dict()
  local keys = {}
  for k in pairs(kw) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do dict_set(d, k, kw[k]) end
  return d
end, "dict")

GLOBALS.strftime_now = callable(function(args)
  return os.date(tostr(args[1]))
end, "strftime_now")

----------------------------------------------------------------------------
-- String and dict methods

local function strip_set(chars_arg)
  if chars_arg == nil or chars_arg == NONE then return "%s" end
  return "[" .. chars_arg:gsub("[%]%[%^%-%%]", "%%%0") .. "]"
end

local function need_str(self, v, what, line)
  if type(v) ~= "string" then self:err(line, string.format("%s needs a string, not %s", what, type_name(v))) end
  return v
end

function STR_METHODS.strip(self, s, a) local set = strip_set(a[1]); return (s:gsub("^" .. set .. "+", ""):gsub(set .. "+$", "")) end
function STR_METHODS.lstrip(self, s, a) return (s:gsub("^" .. strip_set(a[1]) .. "+", "")) end
function STR_METHODS.rstrip(self, s, a) return (s:gsub(strip_set(a[1]) .. "+$", "")) end
function STR_METHODS.upper(self, s) return s:upper() end
function STR_METHODS.lower(self, s) return s:lower() end
function STR_METHODS.startswith(self, s, a, kw, line)
  local p = a[1]
  if is_list(p) then
    for _, x in ipairs(p) do if s:sub(1, #x) == x then return true end end
    return false
  end
  return s:sub(1, #need_str(self, p, "startswith", line)) == p
end
function STR_METHODS.endswith(self, s, a, kw, line)
  local p = a[1]
  if is_list(p) then
    for _, x in ipairs(p) do if x == "" or s:sub(-#x) == x then return true end end
    return false
  end
  need_str(self, p, "endswith", line)
  return p == "" or s:sub(-#p) == p
end
function STR_METHODS.replace(self, s, a, kw, line)
  local old, new = need_str(self, a[1], "replace", line), need_str(self, a[2], "replace", line)
  local count = a[3] or -1
  if old == "" then return s end
  local out, pos, done = {}, 1, 0
  while count < 0 or done < count do
    local i = s:find(old, pos, true)
    if not i then break end
    out[#out + 1] = s:sub(pos, i - 1) .. new
    pos = i + #old
    done = done + 1
  end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end
function STR_METHODS.split(self, s, a, kw, line)
  local sep = a[1] or kw.sep
  local maxsplit = a[2] or kw.maxsplit or -1
  local out = new_list()
  if sep == nil or sep == NONE then
    for w in s:gmatch("%S+") do out[#out + 1] = w end
    return out
  end
  need_str(self, sep, "split", line)
  local pos = 1
  while maxsplit < 0 or #out < maxsplit do
    local i = s:find(sep, pos, true)
    if not i then break end
    out[#out + 1] = s:sub(pos, i - 1)
    pos = i + #sep
  end
  out[#out + 1] = s:sub(pos)
  return out
end
function STR_METHODS.title(self, s)
  return (s:gsub("(%a)([%w]*)", function(a, b) return a:upper() .. b:lower() end))
end
function STR_METHODS.capitalize(self, s) return s:sub(1, 1):upper() .. s:sub(2):lower() end
function STR_METHODS.find(self, s, a, kw, line)
  local i = s:find(need_str(self, a[1], "find", line), 1, true)
  return i and (utf8.len(s, 1, i - 1) or i - 1) or -1
end
function STR_METHODS.count(self, s, a, kw, line)
  local p, n, pos = need_str(self, a[1], "count", line), 0, 1
  if p == "" then return (utf8.len(s) or #s) + 1 end
  while true do
    local i = s:find(p, pos, true)
    if not i then return n end
    n, pos = n + 1, i + #p
  end
end
function STR_METHODS.join(self, s, a, kw, line)
  local parts = {}
  for i, v in ipairs(iterate(self, a[1], line)) do parts[i] = tostr(v) end
  return table.concat(parts, s)
end
function STR_METHODS.splitlines(self, s)
  local out = new_list()
  for l in (s .. "\n"):gmatch("(.-)\r?\n") do out[#out + 1] = l end
  if s:sub(-1) == "\n" then out[#out] = nil end
  if s == "" then return new_list() end
  return out
end

function DICT_METHODS.items(self, d)
  local out = new_list()
  for i, k in ipairs(d.keys) do out[i] = new_list({k, d.map[k], tuple = true}) end
  return out
end
function DICT_METHODS.keys(self, d) return new_list({table.unpack(d.keys)}) end
function DICT_METHODS.values(self, d)
  local out = new_list()
  for i, k in ipairs(d.keys) do out[i] = d.map[k] end
  return out
end
function DICT_METHODS.get(self, d, a)
  local v = d.map[a[1]]
  if v == nil then return a[2] == nil and NONE or a[2] end
  return v
end

----------------------------------------------------------------------------
-- Filters

local function attr_of(self, v, name, line)
  local cur = v
  for part in tostring(name):gmatch("[^.]+") do
    local idx = math.tointeger(tonumber(part))
    cur = idx and getitem(self, cur, idx, line) or getattr(self, cur, part, line)
  end
  return cur
end

FILTERS.trim = function(self, v, a, kw, line)
  return STR_METHODS.strip(self, need_str(self, v, "trim", line), {a[1]})
end
FILTERS.upper = function(self, v, a, kw, line) return need_str(self, v, "upper", line):upper() end
FILTERS.lower = function(self, v, a, kw, line) return need_str(self, v, "lower", line):lower() end
FILTERS.title = function(self, v, a, kw, line) return STR_METHODS.title(self, need_str(self, v, "title", line)) end
FILTERS.capitalize = function(self, v, a, kw, line)
  return STR_METHODS.capitalize(self, need_str(self, v, "capitalize", line))
end
FILTERS.replace = function(self, v, a, kw, line) return STR_METHODS.replace(self, tostr(v), a, kw, line) end
FILTERS.string = function(self, v) return tostr(v) end
FILTERS.safe = function(self, v) return v end
FILTERS.e = function(self, v) return v end
FILTERS.escape = FILTERS.e
FILTERS.length = function(self, v, a, kw, line)
  if type(v) == "string" then return #chars(v) end
  if is_list(v) then return #v end
  if is_dict(v) then return #v.keys end
  if v == UNDEF then return 0 end
  self:err(line, "length of a " .. type_name(v))
end
FILTERS.count = FILTERS.length
FILTERS.default = function(self, v, a, kw)
  local dflt = a[1] == nil and "" or a[1]
  local boolean = a[2] or kw.boolean
  if v == UNDEF or (truthy(boolean) and not truthy(v)) then return dflt end
  return v
end
FILTERS.d = FILTERS.default
FILTERS.join = function(self, v, a, kw, line)
  local sep = a[1] == nil and "" or tostr(a[1])
  local attribute = a[2] or kw.attribute
  local parts = {}
  for i, x in ipairs(iterate(self, v, line)) do
    if attribute then x = attr_of(self, x, attribute, line) end
    parts[i] = tostr(x)
  end
  return table.concat(parts, sep)
end
FILTERS.list = function(self, v, a, kw, line)
  local out = new_list()
  for i, x in ipairs(iterate(self, v, line)) do out[i] = x end
  return out
end
FILTERS.first = function(self, v, a, kw, line)
  local seq = iterate(self, v, line)
  return seq[1] == nil and UNDEF or seq[1]
end
FILTERS.last = function(self, v, a, kw, line)
  local seq = iterate(self, v, line)
  return seq[#seq] == nil and UNDEF or seq[#seq]
end
FILTERS.reverse = function(self, v, a, kw, line)
  if type(v) == "string" then return slice(self, v, nil, nil, -1, line) end
  local seq = iterate(self, v, line)
  local out = new_list()
  for i = #seq, 1, -1 do out[#out + 1] = seq[i] end
  return out
end

local function sort_key_less(self, line)
  return function(x, y)
    if type(x) == type(y) and (type(x) == "number" or type(x) == "string") then return x < y end
    if type(x) == "boolean" and type(y) == "boolean" then return (not x) and y end
    self:err(line, string.format("cannot sort %s with %s", type_name(x), type_name(y)))
  end
end

FILTERS.sort = function(self, v, a, kw, line)
  local out = FILTERS.list(self, v, a, kw, line)
  local attribute = kw.attribute
  local less = sort_key_less(self, line)
  local reverse = truthy(a[1] or kw.reverse)
  table.sort(out, function(x, y)
    local kx, ky = x, y
    if attribute then kx, ky = attr_of(self, x, attribute, line), attr_of(self, y, attribute, line) end
    if reverse then return less(ky, kx) end
    return less(kx, ky)
  end)
  return out
end
FILTERS.dictsort = function(self, v, a, kw, line)
  if not is_dict(v) then self:err(line, "dictsort needs a dict, not " .. type_name(v)) end
  local items = DICT_METHODS.items(self, v)
  local less = sort_key_less(self, line)
  table.sort(items, function(x, y) return less(x[1], y[1]) end)
  return items
end
FILTERS.items = function(self, v, a, kw, line)
  if v == UNDEF then return new_list() end
  if not is_dict(v) then self:err(line, "items needs a dict, not " .. type_name(v)) end
  return DICT_METHODS.items(self, v)
end
FILTERS.unique = function(self, v, a, kw, line)
  local out = new_list()
  for _, x in ipairs(iterate(self, v, line)) do
    local seen = false
    for _, y in ipairs(out) do if equal(x, y) then seen = true; break end end
    if not seen then out[#out + 1] = x end
  end
  return out
end
FILTERS.int = function(self, v, a)
  local n = tonumber(type(v) == "string" and v:match("^%s*(.-)%s*$") or v)
  if not n then return a[1] or 0 end
  return math.tointeger(n >= 0 and math.floor(n) or math.ceil(n))
end
FILTERS.float = function(self, v, a)
  local n = tonumber(v)
  if not n then return a[1] or 0.0 end
  return n + 0.0
end
FILTERS.abs = function(self, v, a, kw, line)
  if type(v) ~= "number" then self:err(line, "abs of a " .. type_name(v)) end
  return math.abs(v)
end
FILTERS.round = function(self, v, a, kw, line)
  if type(v) ~= "number" then self:err(line, "round of a " .. type_name(v)) end
  local p = a[1] or kw.precision or 0
  local m = 10 ^ p
  return math.floor(v * m + 0.5) / m
end
FILTERS.sum = function(self, v, a, kw, line)
  local total = a[2] or kw.start or 0
  for _, x in ipairs(iterate(self, v, line)) do
    if kw.attribute then x = attr_of(self, x, kw.attribute, line) end
    total = binop(self, "+", total, x, line)
  end
  return total
end
FILTERS.min = function(self, v, a, kw, line)
  local seq = FILTERS.sort(self, v, {}, {}, line)
  return seq[1] == nil and UNDEF or seq[1]
end
FILTERS.max = function(self, v, a, kw, line)
  local seq = FILTERS.sort(self, v, {}, {}, line)
  return seq[#seq] == nil and UNDEF or seq[#seq]
end
FILTERS.tojson = function(self, v, a, kw, line)
  local indent = a[1] or kw.indent
  if indent == NONE then indent = nil end
  return to_json(v, indent, 0, function(m) return string.format("chat template line %d: %s", line, m) end)
end
FILTERS.indent = function(self, v, a, kw, line)
  local width = a[1] or kw.width or 4
  local pad = type(width) == "string" and width or string.rep(" ", width)
  local first, blank = truthy(a[2] or kw.first), truthy(a[3] or kw.blank)
  local lines = {}
  for l in (tostr(v) .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  for i = 1, #lines do
    if (i > 1 or first) and (blank or lines[i] ~= "") then lines[i] = pad .. lines[i] end
  end
  return table.concat(lines, "\n")
end
FILTERS.wordcount = function(self, v) local n = 0; for _ in tostr(v):gmatch("%S+") do n = n + 1 end; return n end

-- select / reject / selectattr / rejectattr / map
local function run_test(self, name, x, args, line)
  local t = TESTS[name]
  if not t then self:err(line, string.format("unsupported test '%s'", name)) end
  return t(self, x, args, line)
end

local function select_filter(keep, by_attr)
  return function(self, v, a, kw, line)
    local out = new_list()
    local attr = by_attr and a[1]
    local tname = by_attr and a[2] or (not by_attr and a[1])
    local targs = {}
    for i = (by_attr and 3 or 2), (a.n or #a) do targs[#targs + 1] = a[i] end
    for _, x in ipairs(iterate(self, v, line)) do
      local val = attr and attr_of(self, x, attr, line) or x
      local ok = tname and run_test(self, tname, val, targs, line) or (not tname and truthy(val))
      if ok == keep then out[#out + 1] = x end
    end
    return out
  end
end
FILTERS.select = select_filter(true, false)
FILTERS.reject = select_filter(false, false)
FILTERS.selectattr = select_filter(true, true)
FILTERS.rejectattr = select_filter(false, true)
FILTERS.map = function(self, v, a, kw, line)
  local out = new_list()
  for i, x in ipairs(iterate(self, v, line)) do
    if kw.attribute then
      local r = attr_of(self, x, kw.attribute, line)
      if r == UNDEF and kw.default ~= nil then r = kw.default end
      out[i] = r
    else
      local fname = a[1]
      local fn = FILTERS[fname]
      if not fn then self:err(line, string.format("unsupported filter '%s' in map", tostring(fname))) end
      local rest = {}
      for j = 2, (a.n or #a) do rest[#rest + 1] = a[j] end
      out[i] = fn(self, x, rest, {}, line)
    end
  end
  return out
end

----------------------------------------------------------------------------
-- Tests

TESTS.defined = function(self, v) return v ~= UNDEF end
TESTS.undefined = function(self, v) return v == UNDEF end
TESTS.none = function(self, v) return v == NONE end
TESTS.string = function(self, v) return type(v) == "string" end
TESTS.number = function(self, v) return type(v) == "number" end
TESTS.integer = function(self, v) return math.type(v) == "integer" end
TESTS.float = function(self, v) return math.type(v) == "float" end
TESTS.boolean = function(self, v) return type(v) == "boolean" end
TESTS["true"] = function(self, v) return v == true end
TESTS["false"] = function(self, v) return v == false end
TESTS.mapping = function(self, v) return is_dict(v) end
TESTS.sequence = function(self, v) return is_list(v) or type(v) == "string" or is_dict(v) end
TESTS.iterable = TESTS.sequence
TESTS.callable = function(self, v) return is_callable(v) end
TESTS.even = function(self, v) return math.type(v) == "integer" and v % 2 == 0 end
TESTS.odd = function(self, v) return math.type(v) == "integer" and v % 2 == 1 end
TESTS.divisibleby = function(self, v, a, line)
  if math.type(v) ~= "integer" or math.type(a[1]) ~= "integer" or a[1] == 0 then
    self:err(line, "divisibleby needs integers")
  end
  return v % a[1] == 0
end
TESTS.eq = function(self, v, a) return equal(v, a[1]) end
TESTS.equalto, TESTS["=="] = TESTS.eq, TESTS.eq
TESTS.ne = function(self, v, a) return not equal(v, a[1]) end
TESTS["!="] = TESTS.ne
for name, op in pairs({lt = "<", gt = ">", le = "<=", ge = ">=", lessthan = "<", greaterthan = ">"}) do
  TESTS[name] = function(self, v, a, line) return binop(self, op, v, a[1], line) end
end
TESTS["in"] = function(self, v, a, line) return contains(self, a[1], v, line) end
TESTS.lower = function(self, v) return type(v) == "string" and v:lower() == v end
TESTS.upper = function(self, v) return type(v) == "string" and v:upper() == v end
TESTS.sameas = function(self, v, a) return v == a[1] end

return M
