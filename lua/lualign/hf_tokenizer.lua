--- lualign.hf_tokenizer: reads what a Hugging Face model folder says about
-- its tokenizer -- tokenizer.json's normalizer, pre-tokenizer, BPE model,
-- decoder, added tokens and post-processor, and tokenizer_config.json,
-- special_tokens_map.json and generation_config.json -- into plain tables
-- that lualign.tokenizer builds a tokenizer from.  Every component the C
-- engine does not implement is refused by name.  See docs/tokenizer.md.

local cjson = require "cjson"

local M = {}

local function is_null(v) return v == nil or v == cjson.null end

local function fail(where, fmt, ...)
  error(string.format("tokenizer.load: %s: " .. fmt, where, ...), 0)
end

local function check_type(v, where)
  if type(v) ~= "table" then
    error(string.format("tokenizer.load: %s must be an object, not %s", where,
      v == cjson.null and "null" or ("a " .. type(v))), 0)
  end
  if type(v.type) ~= "string" then fail(where, "has no \"type\"") end
  return v.type
end

-- A {String = s} or {Regex = r} pattern as (pattern, literal).
local function read_pattern(p, where)
  if type(p) == "table" and type(p.String) == "string" then return p.String, true end
  if type(p) == "table" and type(p.Regex) == "string" then return p.Regex, false end
  if type(p) == "string" then return p, true end
  fail(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}")
end

----------------------------------------------------------------------------
-- Normalizers

local NORMALIZER_ALIASES = {NFC = "NFC", NFD = "NFD", NFKC = "NFKC", NFKD = "NFKD", Lowercase = "Lowercase"}

local function read_normalizer(n, where, steps)
  local ty = check_type(n, where)
  if ty == "Sequence" then
    if type(n.normalizers) ~= "table" then fail(where, "Sequence has no list \"normalizers\"") end
    for i, sub in ipairs(n.normalizers) do read_normalizer(sub, string.format("%s.normalizers[%d]", where, i), steps) end
  elseif NORMALIZER_ALIASES[ty] then
    steps[#steps + 1] = {kind = NORMALIZER_ALIASES[ty]}
  elseif ty == "Strip" then
    steps[#steps + 1] = {kind = "Strip", left = n.strip_left ~= false, right = n.strip_right ~= false}
  elseif ty == "Prepend" then
    if type(n.prepend) ~= "string" then fail(where, "Prepend has no string \"prepend\"") end
    steps[#steps + 1] = {kind = "Prepend", text = n.prepend}
  elseif ty == "Replace" then
    local pat, literal = read_pattern(n.pattern, where .. ".pattern")
    if type(n.content) ~= "string" then fail(where, "Replace has no string \"content\"") end
    steps[#steps + 1] = {kind = "Replace", pattern = pat, literal = literal, text = n.content}
  else
    fail(where, "normalizer %s is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, "
      .. "Strip, Prepend, Replace)", ty)
  end
  return steps
end

----------------------------------------------------------------------------
-- Pre-tokenizers

local BEHAVIORS = {Removed = true, Isolated = true, MergedWithPrevious = true, MergedWithNext = true, Contiguous = true}

local function behavior(v, where, default)
  if is_null(v) then return default end
  if not BEHAVIORS[v] then fail(where, "behavior %s is not one of Removed, Isolated, MergedWithPrevious, "
    .. "MergedWithNext, Contiguous", tostring(v)) end
  return v
end

-- Metaspace's prepend scheme, from prepend_scheme or the older add_prefix_space.
local function prepend_scheme(p, where)
  if not is_null(p.prepend_scheme) then
    if p.prepend_scheme ~= "always" and p.prepend_scheme ~= "first" and p.prepend_scheme ~= "never" then
      fail(where, "prepend_scheme %s is not one of always, first, never", tostring(p.prepend_scheme))
    end
    return p.prepend_scheme
  end
  return p.add_prefix_space == false and "never" or "always"
end

local function read_pretokenizer(p, where, steps)
  local ty = check_type(p, where)
  if ty == "Sequence" then
    if type(p.pretokenizers) ~= "table" then fail(where, "Sequence has no list \"pretokenizers\"") end
    for i, sub in ipairs(p.pretokenizers) do
      read_pretokenizer(sub, string.format("%s.pretokenizers[%d]", where, i), steps)
    end
  elseif ty == "ByteLevel" then
    steps[#steps + 1] = {kind = "ByteLevel", add_prefix_space = p.add_prefix_space == true,
      use_regex = p.use_regex ~= false}
  elseif ty == "Split" then
    local pat, literal = read_pattern(p.pattern, where .. ".pattern")
    steps[#steps + 1] = {kind = "Split", pattern = pat, literal = literal, invert = p.invert == true,
      behavior = behavior(p.behavior, where, "Isolated")}
  elseif ty == "Metaspace" then
    local rep = p.replacement
    if type(rep) ~= "string" or rep == "" then fail(where, "Metaspace has no \"replacement\"") end
    steps[#steps + 1] = {kind = "Metaspace", replacement = rep, scheme = prepend_scheme(p, where),
      split = p.split ~= false}
  elseif ty == "Digits" then
    steps[#steps + 1] = {kind = "Digits", individual = p.individual_digits == true}
  elseif ty == "Punctuation" then
    steps[#steps + 1] = {kind = "Punctuation", behavior = behavior(p.behavior, where, "Isolated")}
  elseif ty == "Whitespace" or ty == "WhitespaceSplit" then
    steps[#steps + 1] = {kind = ty}
  else
    fail(where, "pre-tokenizer %s is not supported (supported: Sequence, ByteLevel, Split, Metaspace, Digits, "
      .. "Punctuation, Whitespace, WhitespaceSplit)", ty)
  end
  return steps
end

----------------------------------------------------------------------------
-- Decoders

local function read_decoder(d, where, steps)
  local ty = check_type(d, where)
  if ty == "Sequence" then
    if type(d.decoders) ~= "table" then fail(where, "Sequence has no list \"decoders\"") end
    for i, sub in ipairs(d.decoders) do read_decoder(sub, string.format("%s.decoders[%d]", where, i), steps) end
  elseif ty == "ByteLevel" or ty == "ByteFallback" or ty == "Fuse" then
    steps[#steps + 1] = {kind = ty}
  elseif ty == "Metaspace" then
    if type(d.replacement) ~= "string" or d.replacement == "" then fail(where, "Metaspace has no \"replacement\"") end
    steps[#steps + 1] = {kind = "Metaspace", replacement = d.replacement, scheme = prepend_scheme(d, where)}
  elseif ty == "Strip" then
    if type(d.content) ~= "string" or utf8.len(d.content) ~= 1 then fail(where, "Strip's content must be one character") end
    steps[#steps + 1] = {kind = "Strip", content = d.content, start = math.tointeger(d.start) or 0,
      stop = math.tointeger(d.stop) or 0}
  elseif ty == "Replace" then
    local pat, literal = read_pattern(d.pattern, where .. ".pattern")
    if type(d.content) ~= "string" then fail(where, "Replace has no string \"content\"") end
    steps[#steps + 1] = {kind = "Replace", pattern = pat, literal = literal, text = d.content}
  else
    fail(where, "decoder %s is not supported (supported: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, "
      .. "Strip, Replace)", ty)
  end
  return steps
end

----------------------------------------------------------------------------
-- Post-processors: a template of pieces, {special = name} or {sequence = true}

local function read_template(list, specials, where)
  if type(list) ~= "table" then fail(where, "TemplateProcessing needs a list \"single\"") end
  local out = {}
  for i, item in ipairs(list) do
    if type(item) == "table" and type(item.SpecialToken) == "table" then
      local name = item.SpecialToken.id
      local sp = specials[name]
      if type(sp) ~= "table" or type(sp.ids) ~= "table" then
        fail(where, "special token %s of the template is not in special_tokens", tostring(name))
      end
      local ids = {}
      for k, id in ipairs(sp.ids) do ids[k] = math.tointeger(id) end
      out[#out + 1] = {ids = ids}
    elseif type(item) == "table" and type(item.Sequence) == "table" then
      if item.Sequence.id ~= "A" then fail(where, "single[%d] names sequence %s; a single template has only A", i,
        tostring(item.Sequence.id)) end
      out[#out + 1] = {sequence = true}
    else
      fail(where, "single[%d] is neither a SpecialToken nor a Sequence", i)
    end
  end
  return out
end

-- The template that add_special_tokens = true applies to one sequence, as
-- a list of pieces; nil when the post-processor adds nothing.
local function read_post(p, where)
  if is_null(p) then return nil end
  local ty = check_type(p, where)
  if ty == "ByteLevel" then return nil end   -- it only trims offsets
  if ty == "TemplateProcessing" then
    return read_template(p.single, type(p.special_tokens) == "table" and p.special_tokens or {}, where)
  end
  if ty == "RobertaProcessing" or ty == "BertProcessing" then
    local function pair(v, name)
      if type(v) ~= "table" or type(v[2]) ~= "number" then fail(where, "%s needs \"%s\": [token, id]", ty, name) end
      return {ids = {math.tointeger(v[2])}}
    end
    return {pair(p.cls, "cls"), {sequence = true}, pair(p.sep, "sep")}
  end
  if ty == "Sequence" then
    if type(p.processors) ~= "table" then fail(where, "Sequence has no list \"processors\"") end
    local result
    for i, sub in ipairs(p.processors) do
      local t = read_post(sub, string.format("%s.processors[%d]", where, i))
      if t then
        if result then fail(where, "a Sequence of two post-processors that both add tokens is not supported") end
        result = t
      end
    end
    return result
  end
  fail(where, "post-processor %s is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
    .. "BertProcessing, Sequence)", ty)
end

----------------------------------------------------------------------------
-- tokenizer.json

--- What a decoded tokenizer.json asks for: a table with
--  normalizer (steps or nil), pretokenizer (steps or nil), fast = {pattern,
--  prefix} when GPT-2's byte-level path can serve instead, char_level,
--  decoder (steps or nil: joining the tokens' bytes is the same),
--  model = {byte_fallback, unk_token, fuse_unk, ignore_merges},
--  post (a template or nil), added (list of {id, content, special, lstrip,
--  rstrip, single_word, normalized}, in the file's order).
function M.read(j, path)
  if type(j) ~= "table" or type(j.model) ~= "table" then
    fail(path, "no \"model\" object; is this a tokenizer.json?")
  end
  local m = j.model
  local mtype = is_null(m.type) and (m.merges and "BPE") or m.type
  if mtype ~= "BPE" then
    fail(path, "model type %s is not supported (only BPE; Unigram, WordPiece and WordLevel are not)", tostring(mtype))
  end
  for _, key in ipairs({"continuing_subword_prefix", "end_of_word_suffix"}) do
    if not is_null(m[key]) and m[key] ~= "" then fail(path, "model.%s is not supported", key) end
  end
  if not is_null(m.dropout) and m.dropout ~= 0 then
    fail(path, "BPE dropout (model.dropout = %s) is a training-time option and is not supported; set it to null",
      tostring(m.dropout))
  end
  local r = {path = path}
  if not is_null(j.normalizer) then
    r.normalizer = read_normalizer(j.normalizer, path .. ": normalizer", {})
    if #r.normalizer == 0 then r.normalizer = nil end
  end
  local steps = {}
  if not is_null(j.pre_tokenizer) then read_pretokenizer(j.pre_tokenizer, path .. ": pre_tokenizer", steps) end
  local byte_level = false
  for i, s in ipairs(steps) do
    if s.kind == "ByteLevel" then
      if i ~= #steps then fail(path .. ": pre_tokenizer", "ByteLevel must be the last pre-tokenizer of a Sequence") end
      byte_level = true
    end
  end
  r.char_level = not byte_level
  -- GPT-2's path: ByteLevel alone, or one Isolated Split regex then ByteLevel without its regex.
  local last = steps[#steps]
  if not r.normalizer and byte_level then
    if #steps == 1 then
      r.fast = {pattern = (not last.use_regex) and "(?s).+" or nil, prefix = last.add_prefix_space}
    elseif #steps == 2 and not last.use_regex and steps[1].kind == "Split" and steps[1].behavior == "Isolated"
        and not steps[1].invert then
      local pat = steps[1].pattern
      if steps[1].literal then pat = "\\Q" .. pat:gsub("\\E", "\\E\\\\E\\Q") .. "\\E" end
      r.fast = {pattern = pat, prefix = last.add_prefix_space}
    end
  end
  if not r.fast and #steps > 0 then r.pretokenizer = steps end
  if not is_null(j.decoder) then
    r.decoder = read_decoder(j.decoder, path .. ": decoder", {})
    if #r.decoder == 1 and r.decoder[1].kind == "ByteLevel" and byte_level then r.decoder = nil end
  else
    r.decoder = {{kind = "Join"}}   -- without a decoder, Hugging Face joins the tokens with spaces
  end
  r.model = {byte_fallback = m.byte_fallback == true, fuse_unk = m.fuse_unk == true,
    ignore_merges = m.ignore_merges == true, unk_token = not is_null(m.unk_token) and m.unk_token or nil}
  r.post = read_post(j.post_processor, path .. ": post_processor")
  r.added = {}
  if not is_null(j.added_tokens) then
    if type(j.added_tokens) ~= "table" then fail(path, "added_tokens must be a list") end
    for i, t in ipairs(j.added_tokens) do
      local where = string.format("%s: added_tokens[%d]", path, i)
      if type(t) ~= "table" or type(t.content) ~= "string" or t.content == "" then
        error(string.format("tokenizer.load: %s has no content", where), 0)
      end
      local id = type(t.id) == "number" and math.tointeger(t.id)
      if not id or id < 0 then error(string.format("tokenizer.load: %s.id is not a non-negative integer id", where), 0) end
      r.added[#r.added + 1] = {id = id, content = t.content, special = t.special == true, lstrip = t.lstrip == true,
        rstrip = t.rstrip == true, single_word = t.single_word == true,
        normalized = t.normalized == true or (is_null(t.normalized) and t.special ~= true)}
    end
  end
  return r
end

----------------------------------------------------------------------------
-- The configuration files beside tokenizer.json

local function read_json(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local ok, v = pcall(cjson.decode, text)
  if not ok then
    error(string.format("tokenizer.load: %s: malformed JSON (%s)", path, (tostring(v):gsub("^.-:%d+: ", ""))), 0)
  end
  if type(v) ~= "table" then error(string.format("tokenizer.load: %s is not a JSON object", path), 0) end
  return v
end

-- A role's token: a string, an AddedToken object ({content = ...}), or null.
local function role_token(v)
  if type(v) == "table" then v = v.content end
  if type(v) == "string" then return v end
  if v == cjson.null then return false end
  return nil
end

local LLAMA_STYLE = {LlamaTokenizer = true, LlamaTokenizerFast = true, CodeLlamaTokenizer = true,
  CodeLlamaTokenizerFast = true, GemmaTokenizer = true, GemmaTokenizerFast = true}

--- The settings of the configuration files in dir (each optional):
--  roles {bos_token, eos_token, pad_token, unk_token} (names, or false for
--  null), chat_templates (name -> template; "default" for a plain string),
--  model_max_length, add_bos_token/add_eos_token (when the tokenizer class
--  honours them), clean_up_tokenization_spaces, eos_token_ids (from
--  generation_config.json), tokenizer_class.
function M.read_config(dir)
  local cfg = read_json(dir .. "/tokenizer_config.json") or {}
  local map = read_json(dir .. "/special_tokens_map.json") or {}
  local gen = read_json(dir .. "/generation_config.json") or {}
  local r = {roles = {}, chat_templates = nil}
  for _, role in ipairs({"bos", "eos", "pad", "unk"}) do
    local key = role .. "_token"
    local v = role_token(cfg[key])
    if v == nil then v = role_token(map[key]) end
    r.roles[key] = v
  end
  local ct = cfg.chat_template
  if type(ct) == "string" then
    r.chat_templates = {default = ct}
  elseif type(ct) == "table" then
    r.chat_templates = {}
    for i, item in ipairs(ct) do
      if type(item) ~= "table" or type(item.name) ~= "string" or type(item.template) ~= "string" then
        error(string.format("tokenizer.load: %s/tokenizer_config.json: chat_template[%d] must be {name, template}",
          dir, i), 0)
      end
      r.chat_templates[item.name] = item.template
    end
  end
  if type(cfg.model_max_length) == "number" then
    r.model_max_length = cfg.model_max_length < 2^53 and math.tointeger(cfg.model_max_length) or math.huge
  end
  r.tokenizer_class = type(cfg.tokenizer_class) == "string" and cfg.tokenizer_class or nil
  if LLAMA_STYLE[r.tokenizer_class] and (cfg.add_bos_token ~= nil or cfg.add_eos_token ~= nil) then
    r.add_bos_token = cfg.add_bos_token == true
    r.add_eos_token = cfg.add_eos_token == true
  end
  r.clean_up_tokenization_spaces = cfg.clean_up_tokenization_spaces == true
  local e = gen.eos_token_id
  if type(e) == "number" then e = {e} end
  if type(e) == "table" then
    r.eos_token_ids = {}
    for i, v in ipairs(e) do r.eos_token_ids[i] = math.tointeger(v) end
  end
  return r
end

return M
