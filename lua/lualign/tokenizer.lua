--- lualign.tokenizer: byte-level BPE tokenizers (GPT-2's scheme), a trainer,
-- a byte tokenizer, special tokens and a chat template.
--
--     local la = require "lualign"
--     local tok = la.tokenizer.load("gpt2")            -- the bundled GPT-2 files
--     local ids = tok:encode("Hello world")            --> {15496, 995}
--     print(tok:decode(ids))                           --> Hello world
--
-- Token ids are 0-based, as in every tokenizer file.  The hot paths
-- (pre-tokenisation with PCRE2, merges, the word cache, training) are C:
-- engine/tokenizer/la_tokenizer.c.  See docs/tokenizer.md.

local core = require "lualign.core"
local cjson = require "cjson"
local util = require "lualign.util"

local bpe = core.bpe
local M = {}

--- The special tokens byte() and train() add when none are given.
M.DEFAULT_SPECIAL_TOKENS = {"<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"}

--- Names recognised as the BOS, EOS and PAD roles when no role is named.
local ROLE_NAMES = {
  bos = {"<|bos|>", "<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"},
  eos = {"<|eos|>", "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"},
  pad = {"<|pad|>", "<pad>", "[PAD]", "<|padding|>"},
}

--- The chat template, in words (docs/tokenizer.md has the details).
M.CHAT_TEMPLATE = "<|{role}|>\\n{content}<|end|>\\n per message; "
  .. "add_generation_prompt appends <|assistant|>\\n"

--- The tokenizer object returned by load, byte and train (methods below).
local Tokenizer = {}
Tokenizer.__index = Tokenizer
M.Tokenizer = Tokenizer

local function is_null(v) return v == nil or v == cjson.null end

local function read_file(path, what)
  local f, err = io.open(path, "rb")
  if not f then error(string.format("%s: cannot open %s", what, err), 3) end
  local data, rerr = f:read("a")
  f:close()
  if not data then error(string.format("%s: cannot read %s: %s", what, path, rerr), 3) end
  return data
end

local function is_dir(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local _, _, code = f:read(0)
  f:close()
  return code == 21   -- EISDIR
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function decode_json(path)
  local text = read_file(path, "tokenizer.load")
  local ok, value = pcall(cjson.decode, text)
  if not ok then
    error(string.format("tokenizer.load: %s: malformed JSON (%s)", path, (tostring(value):gsub("^.-:%d+: ", ""))), 3)
  end
  return value
end

-- lua-cjson 2.1.0 decodes every number as a float: ids come back as integers.
-- where is a string, or a function making one (called only on error).
local function to_id(v, where)
  local n = type(v) == "number" and math.tointeger(v)
  if not n or n < 0 then
    if type(where) == "function" then where = where() end
    error(string.format("tokenizer.load: %s is not a non-negative integer id", where), 3)
  end
  return n
end

-- A map {spelling = id} as the list of spellings by id; ids must be 0..n-1.
local function spellings_by_id(map, where)
  if type(map) ~= "table" or map[1] ~= nil then
    error(string.format("tokenizer.load: %s is not an object of token: id pairs", where), 3)
  end
  local list, n = {}, 0
  for k, v in pairs(map) do
    if type(k) ~= "string" then error(string.format("tokenizer.load: %s has a non-string key", where), 3) end
    local id = to_id(v, function() return string.format("%s[%q]", where, k) end)
    if list[id + 1] then
      error(string.format("tokenizer.load: %s: id %d is given to both %q and %q", where, id, list[id + 1], k), 3)
    end
    list[id + 1] = k
    n = n + 1
  end
  for i = 1, n do
    if list[i] == nil then
      error(string.format("tokenizer.load: %s: ids must run from 0 to %d without gaps, but id %d is missing",
        where, n - 1, i - 1), 3)
    end
  end
  return list
end

----------------------------------------------------------------------------
-- Construction

local function wrap(ud, kind, model_size)
  local self = setmetatable({_bpe = ud, kind = kind, _model_size = model_size}, Tokenizer)
  self.vocab_size = bpe.vocab_size(ud)
  return self
end

-- Sets bos/eos/pad from explicit names (opts.bos_token, ...) or, for the roles
-- still unset, from the special tokens' names.
function Tokenizer:_assign_roles(opts)
  opts = opts or {}
  for _, role in ipairs({"bos", "eos", "pad"}) do
    local name = opts[role .. "_token"]
    if name ~= nil then
      if name == false then
        self[role .. "_id"] = nil
      else
        local id = self:token_to_id(name)
        if not id then
          error(string.format("tokenizer: %s_token %q is not in the vocabulary", role, tostring(name)), 3)
        end
        self[role .. "_id"] = id
      end
    elseif self[role .. "_id"] == nil then
      for _, cand in ipairs(ROLE_NAMES[role]) do
        local id = self:token_to_id(cand)
        if id and bpe.is_special(self._bpe, id) then
          self[role .. "_id"] = id
          break
        end
      end
    end
  end
end

local function add_specials(self, list, what)
  local added = 0
  for i, s in ipairs(list) do
    if type(s) ~= "string" or s == "" then
      error(string.format("%s: special token %d must be a non-empty string", what, i), 3)
    end
    local before = bpe.vocab_size(self._bpe)
    bpe.add_special(self._bpe, s)
    if bpe.vocab_size(self._bpe) > before then added = added + 1 end
  end
  self.vocab_size = bpe.vocab_size(self._bpe)
  return added
end

local function check_specials(list, what)
  if list == nil then return M.DEFAULT_SPECIAL_TOKENS end
  if type(list) ~= "table" then error(what .. ": special_tokens must be a list of strings", 3) end
  return list
end

--- A byte tokenizer: ids 0..255 are the bytes 0..255, special tokens follow.
-- opts: special_tokens (default M.DEFAULT_SPECIAL_TOKENS), bos_token,
-- eos_token, pad_token.
function M.byte(opts)
  opts = opts or {}
  local ud = bpe.new(M._byte_spellings())
  local self = wrap(ud, "byte", 256)
  add_specials(self, check_specials(opts.special_tokens, "tokenizer.byte"), "tokenizer.byte")
  self:_assign_roles(opts)
  return self
end

-- GPT-2's printable stand-in for each byte, as the spellings of ids 0..255.
function M._byte_spellings()
  local list = {}
  local n = 0
  for b = 0, 255 do
    local printable = (b >= 33 and b <= 126) or (b >= 161 and b <= 172) or b >= 174
    if printable then
      list[b + 1] = utf8.char(b)
    else
      list[b + 1] = utf8.char(256 + n)
      n = n + 1
    end
  end
  return list
end

--- Trains a byte-level BPE tokenizer on a text or a list of texts.
-- opts: vocab_size (default 1000, special tokens included), special_tokens
-- (default M.DEFAULT_SPECIAL_TOKENS; cut out of the texts, never learned
-- from), min_frequency (default 2), bos_token, eos_token, pad_token.
function M.train(texts, opts)
  opts = opts or {}
  if type(texts) == "string" then texts = {texts} end
  if type(texts) ~= "table" then error("tokenizer.train: expected a string or a list of strings", 2) end
  local specials = check_specials(opts.special_tokens, "tokenizer.train")
  local vocab_size = opts.vocab_size or 1000
  if math.type(vocab_size) ~= "integer" then error("tokenizer.train: vocab_size must be an integer", 2) end
  local n_tokens = vocab_size - #specials
  if n_tokens < 256 then
    error(string.format("tokenizer.train: vocab_size %d is too small: it must hold the 256 bytes and %d special tokens",
      vocab_size, #specials), 2)
  end
  local min_frequency = opts.min_frequency or 2
  local ud = bpe.train(texts, specials, n_tokens, min_frequency)
  local self = wrap(ud, "bpe", bpe.vocab_size(ud))
  add_specials(self, specials, "tokenizer.train")
  self:_assign_roles(opts)
  return self
end

local function load_gpt2_dir(dir, opts)
  local enc_path, bpe_path = dir .. "/encoder.json", dir .. "/vocab.bpe"
  local enc = decode_json(enc_path)
  local spellings = spellings_by_id(enc, enc_path)
  local merges = read_file(bpe_path, "tokenizer.load")
  local ud = bpe.new(spellings)
  local ok, err = pcall(bpe.add_merges_text, ud, merges, bpe_path)
  if not ok then error("tokenizer.load: " .. tostring(err), 2) end
  local self = wrap(ud, "bpe", #spellings)
  if bpe.token_to_id(ud, "<|endoftext|>") then bpe.add_special(ud, "<|endoftext|>") end
  self.vocab_size = bpe.vocab_size(ud)
  self:_assign_roles(opts)
  return self
end

-- A tokenizer from a tokenizer.json and the configuration files beside it
-- (lualign.hf_tokenizer reads them; this builds).
local function load_tokenizer_json(path, dir, opts)
  local hf = require "lualign.hf_tokenizer"
  local j = decode_json(path)
  local r = hf.read(j, path)
  local cfg = hf.read_config(dir)
  local m = r.model
  local spellings = spellings_by_id(j.model.vocab, path .. ": model.vocab")
  local ok, ud
  if r.fast then
    ok, ud = pcall(bpe.new, spellings, r.fast.pattern, r.fast.prefix)
  else
    ok, ud = pcall(bpe.new, spellings, nil, false, r.char_level)
  end
  if not ok then error(string.format("tokenizer.load: %s: %s", path, tostring(ud)), 2) end
  local function step(fn, ...)
    local ok2, err = pcall(fn, ud, ...)
    if not ok2 then error(string.format("tokenizer.load: %s: %s", path, (tostring(err):gsub("^tokenizer: ", ""))), 3) end
    return err
  end
  if type(j.model.merges) ~= "table" then error(string.format("tokenizer.load: %s: model.merges is not a list", path), 2) end
  local merr
  ok, merr = pcall(bpe.add_merges_list, ud, j.model.merges, path .. ": model.merges")
  if not ok then error("tokenizer.load: " .. tostring(merr), 2) end
  j = nil
  if r.normalizer then step(bpe.set_normalizer, r.normalizer) end
  if r.pretokenizer then step(bpe.set_pretokenizer, r.pretokenizer) end
  if r.decoder then step(bpe.set_decoder, r.decoder) end
  local unk_id
  if m.unk_token then
    unk_id = bpe.token_to_id(ud, m.unk_token)
    if not unk_id then error(string.format("tokenizer.load: %s: model.unk_token %q is not in the vocabulary", path,
      m.unk_token), 2) end
  end
  step(bpe.set_model, m.byte_fallback, unk_id, m.fuse_unk, m.ignore_merges)
  local self = wrap(ud, "bpe", #spellings)
  -- Ids as Hugging Face gives them, in the file's order: a content already
  -- in the vocabulary keeps that id, any other takes the next one.  A file
  -- whose "id" says otherwise is inconsistent (Hugging Face warns and uses
  -- its own id): refused, naming both.
  for i, t in ipairs(r.added) do
    local ok2, id = pcall(bpe.add_added, ud, t.content, nil, t)
    if not ok2 then error(string.format("tokenizer.load: %s: added token %q: %s", path, t.content, tostring(id)), 2) end
    if id ~= t.id then
      error(string.format("tokenizer.load: %s: added_tokens[%d] %q has id %d, but takes id %d (a content already in "
        .. "the vocabulary keeps its id, any other takes the next one): the file is inconsistent", path, i, t.content,
        t.id, id), 2)
    end
  end
  self.vocab_size = bpe.vocab_size(ud)
  self._post = r.post
  if cfg.add_bos_token ~= nil then self._config_bos_eos = {cfg.add_bos_token, cfg.add_eos_token} end
  self.chat_templates = cfg.chat_templates
  self.chat_template = cfg.chat_templates and cfg.chat_templates.default
  self.model_max_length = cfg.model_max_length
  self.clean_up_tokenization_spaces = cfg.clean_up_tokenization_spaces
  self.tokenizer_class = cfg.tokenizer_class
  local roles = {}
  for k, v in pairs(opts or {}) do roles[k] = v end
  for _, role in ipairs({"bos", "eos", "pad"}) do
    local key = role .. "_token"
    if roles[key] == nil then roles[key] = cfg.roles[key] end
  end
  self:_assign_roles(roles)
  if cfg.roles.unk_token then self.unk_id = self:token_to_id(cfg.roles.unk_token) end
  self.eos_ids = cfg.eos_token_ids or (self.eos_id and {self.eos_id}) or nil
  self._hf = true
  -- save() writes GPT-2's scheme only: anything beyond it is noted here
  self._pipeline = (r.normalizer or r.pretokenizer or r.decoder or r.char_level or m.byte_fallback or m.ignore_merges
    or m.unk_token or r.post) and path or nil
  return self
end

-- Where the bundled GPT-2 files are: the gpt2/ folder of the bundled data
-- (see la.data.search_dirs: $LUALIGN_DATA, the installed copy, the checkout).
local function bundled(name)
  local candidates = {}
  for _, dir in ipairs(require("lualign.data").search_dirs()) do
    candidates[#candidates + 1] = dir .. "/" .. name
    if exists(dir .. "/" .. name .. "/encoder.json") then return dir .. "/" .. name end
  end
  return nil, table.concat(candidates, ", ")
end

-- What M.load does, with errors that M.load puts at its caller's line.
local function load_any(path, opts)
  if type(path) ~= "string" then error("tokenizer.load: expected a path", 2) end
  if path == "gpt2" and not exists(path) then
    local dir, tried = bundled("gpt2")
    if not dir then error("tokenizer.load: the bundled GPT-2 files were not found (looked in " .. tried .. ")", 2) end
    path = dir
  end
  if is_dir(path) then
    if exists(path .. "/tokenizer.json") then
      return load_tokenizer_json(path .. "/tokenizer.json", path, opts)
    end
    if exists(path .. "/encoder.json") or exists(path .. "/vocab.bpe") then
      return load_gpt2_dir(path, opts)
    end
    error(string.format("tokenizer.load: %s holds neither tokenizer.json nor encoder.json + vocab.bpe", path), 2)
  end
  if not exists(path) then error(string.format("tokenizer.load: %s: no such file or directory", path), 2) end
  local dir = path:match("^(.*)[/\\]") or "."
  return load_tokenizer_json(path, dir, opts)
end

--- Loads a tokenizer: a tokenizer.json file, a directory holding
-- tokenizer.json or encoder.json + vocab.bpe, or "gpt2" for the bundled
-- GPT-2 files.  opts: bos_token, eos_token, pad_token (names; false unsets).
function M.load(path, opts)
  util.check_options("tokenizer.load", opts, {"bos_token", "eos_token", "pad_token"})
  local ok, tok = pcall(load_any, path, opts)
  if ok then
    -- The decoded files are garbage now: for Qwen3's tokenizer.json, 40 MB
    -- of Lua strings and tables.  Lua starts its next cycle when the heap
    -- has doubled since the last one, which ran while they were still in
    -- use; until then nothing freed was reused, and the lists of ids for
    -- the next 6 MB of text encoded (24 MB of tables) came from fresh
    -- pages, a page fault every 4 KiB, which made that encoding run at half
    -- to two thirds of its speed.  One full collection here takes 25 ms.
    if collectgarbage("isrunning") then collectgarbage() end
    return tok
  end
  -- Errors are raised at the caller's line, and always start with
  -- "tokenizer.load:"; a file shaped in a way no check above foresaw still
  -- gets a message that names it.
  local msg = tostring(tok)
  local clean = msg:match("tokenizer%.load: .*$")
  if not clean then
    clean = string.format("tokenizer.load: %s: malformed tokenizer file (%s)", tostring(path),
      (msg:gsub("^[^:]*:%d+: ", "")))
  end
  error(clean, 2)
end

----------------------------------------------------------------------------
-- Encoding and decoding

-- The ids add_special_tokens puts around a sequence: Hugging Face's
-- post-processor template, or (Llama- and Gemma-style configurations) the
-- tokenizer_config.json's add_bos_token / add_eos_token; lualign's own
-- tokenizers put bos_id first and eos_id last.
local function add_special(self, ids)
  local cfg = self._config_bos_eos
  if self._hf and not cfg then
    local post = self._post
    if not post then return ids end
    local out = {}
    for _, piece in ipairs(post) do
      if piece.sequence then
        table.move(ids, 1, #ids, #out + 1, out)
      else
        table.move(piece.ids, 1, #piece.ids, #out + 1, out)
      end
    end
    return out
  end
  local bos, eos = self.bos_id, self.eos_id
  if cfg then
    bos, eos = cfg[1] and bos or nil, cfg[2] and eos or nil
  end
  if bos then table.insert(ids, 1, bos) end
  if eos then ids[#ids + 1] = eos end
  return ids
end

local ENCODE_OPTIONS = {"add_special_tokens", "split_special_tokens"}

--- Encodes text to a list of 0-based ids.
-- opts.add_special_tokens (default false): add the special tokens the
-- tokenizer puts around a text (a Hugging Face tokenizer's post-processor,
-- e.g. Llama's BOS and none for Qwen; lualign's own tokenizers put bos_id
-- first and eos_id last).  opts.split_special_tokens (default false): treat
-- special tokens written in the text as plain text.
function Tokenizer:encode(text, opts)
  if type(text) ~= "string" then
    error(string.format("encode: expected a string, got a %s", type(text)), 2)
  end
  local recognise = true
  if opts then
    util.check_options("encode", opts, ENCODE_OPTIONS)
    if opts.split_special_tokens then recognise = false end
  end
  local ok, ids = pcall(bpe.encode, self._bpe, text, recognise)
  if not ok then error(ids, 2) end   -- at the caller's line, not this one
  if opts and opts.add_special_tokens then ids = add_special(self, ids) end
  return ids
end

-- transformers' clean_up_tokenization: spaces before punctuation and
-- English contractions removed.
local CLEANUPS = {{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
  {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}}

local function clean_up(text)
  for _, r in ipairs(CLEANUPS) do
    local from = r[1]:gsub("%p", "%%%0")
    text = text:gsub(from, (r[2]:gsub("%%", "%%%%")))
  end
  return text
end

local DECODE_OPTIONS = {"skip_special_tokens", "clean_up_tokenization_spaces"}

--- Decodes ids (a list, or a 1-d integer tensor) to a string of bytes.
-- opts.skip_special_tokens (default false) leaves special tokens out;
-- opts.clean_up_tokenization_spaces (default: the tokenizer_config.json's
-- setting, else false) removes spaces before punctuation as transformers does.
function Tokenizer:decode(ids, opts)
  if opts then util.check_options("decode", opts, DECODE_OPTIONS) end
  local ok, text = pcall(bpe.decode, self._bpe, ids, opts ~= nil and opts.skip_special_tokens or false)
  if not ok then error(text, 2) end   -- at the caller's line, not this one
  local cleanup = self.clean_up_tokenization_spaces
  if opts and opts.clean_up_tokenization_spaces ~= nil then cleanup = opts.clean_up_tokenization_spaces end
  if cleanup then text = clean_up(text) end
  return text
end

--- The pre-tokens of text (GPT-2's regex split), for inspection.
function Tokenizer:pretokenize(text)
  if type(text) ~= "string" then error("pretokenize: expected a string", 2) end
  return bpe.pretokenize(self._bpe, text)
end

--- The id of a token given as the vocabulary spells it ("Ġthe" for " the",
-- as in encoder.json), or nil.
function Tokenizer:token_to_id(s)
  if type(s) ~= "string" then return nil end
  return bpe.token_to_id(self._bpe, s)
end

--- The vocabulary's spelling of an id ("Ġthe"), or nil when out of range.
function Tokenizer:id_to_token(id)
  if math.type(id) ~= "integer" then return nil end
  return bpe.token_spelling(self._bpe, id)
end

--- The bytes an id stands for (" the"), or nil.
function Tokenizer:id_to_bytes(id)
  if math.type(id) ~= "integer" then return nil end
  return bpe.token_bytes(self._bpe, id)
end

function Tokenizer:is_special(id)
  return math.type(id) == "integer" and bpe.is_special(self._bpe, id)
end

--- The special tokens as a list of {id = ..., content = ...}, by id.
function Tokenizer:special_tokens()
  local list = {}
  for id = 0, self.vocab_size - 1 do
    if bpe.is_special(self._bpe, id) then list[#list + 1] = {id = id, content = bpe.token_bytes(self._bpe, id)} end
  end
  return list
end

--- Adds special tokens (a list of strings, or one string): a string already
-- in the vocabulary is marked special, others get the next ids.  Unset
-- bos/eos/pad roles are filled from recognised names.  Returns the number
-- of new ids.
function Tokenizer:add_special_tokens(list)
  if type(list) == "string" then list = {list} end
  if type(list) ~= "table" then error("add_special_tokens: expected a list of strings", 2) end
  local added = add_specials(self, list, "add_special_tokens")
  self:_assign_roles()
  return added
end

function Tokenizer:num_merges() return bpe.num_merges(self._bpe) end

function Tokenizer:__tostring()
  return string.format("Tokenizer(%s, vocab_size=%d, merges=%d, bos_id=%s, eos_id=%s, pad_id=%s)",
    self.kind, self.vocab_size, bpe.num_merges(self._bpe), tostring(self.bos_id), tostring(self.eos_id),
    tostring(self.pad_id))
end

----------------------------------------------------------------------------
-- Chat template
--
-- Each message {role = r, content = c} becomes
--     <|r|>  "\n"  c  <|end|>  "\n"
-- where <|r|> and <|end|> are special tokens and the text pieces are encoded
-- one by one.  add_generation_prompt appends <|assistant|> "\n".  The mask
-- is 1 on the tokens of an assistant message's content and its <|end|>.

local function chat_check(self, messages, opts)
  if type(messages) ~= "table" then error("apply_chat_template: messages must be a list of {role, content}", 3) end
  local function marker(role, what)
    local s = "<|" .. role .. "|>"
    local id = self:token_to_id(s)
    if not id or not bpe.is_special(self._bpe, id) then
      error(string.format("apply_chat_template: %s needs the special token %s, which this tokenizer lacks "
        .. "(add it with tok:add_special_tokens{%q})", what, s, s), 4)
    end
    return id
  end
  for i, m in ipairs(messages) do
    if type(m) ~= "table" or type(m.role) ~= "string" or type(m.content) ~= "string" then
      error(string.format("apply_chat_template: message %d must be a table with string fields role and content", i), 3)
    end
  end
  return marker
end

-- The built-in layout: ids and mask, pieces encoded one by one.
local function builtin_chat(self, messages, opts)
  local marker = chat_check(self, messages, opts)
  local end_id = marker("end", "every message")
  local nl = self:encode("\n")
  local content_opts = {split_special_tokens = opts.split_special_tokens}
  local ids, mask = {}, {}
  local function put(list, m)
    for _, id in ipairs(list) do
      ids[#ids + 1] = id
      mask[#mask + 1] = m
    end
  end
  for i, msg in ipairs(messages) do
    local role_id = marker(msg.role, string.format("message %d (role %q)", i, msg.role))
    local a = msg.role == "assistant" and 1 or 0
    put({role_id}, 0)
    put(nl, 0)
    put(self:encode(msg.content, content_opts), a)
    put({end_id}, a)
    put(nl, 0)
  end
  if opts.add_generation_prompt then
    put({marker("assistant", "add_generation_prompt")}, 0)
    put(nl, 0)
  end
  return ids, mask
end

local CHAT_OPTIONS = {"add_generation_prompt", "tokenize", "split_special_tokens", "chat_template", "tools",
  "documents", "variables"}

-- The template source to use: opts.chat_template names one of the
-- tokenizer's templates or is a template text itself; else the default.
local function pick_template(self, choice)
  if choice == nil then return self.chat_template end
  if type(choice) ~= "string" then util.error("apply_chat_template: chat_template must be a string (a name or a template)") end
  if self.chat_templates and self.chat_templates[choice] then return self.chat_templates[choice] end
  if choice:find("{[{%%]") then return choice end
  local names = self.chat_templates and util.sorted_keys(self.chat_templates) or {}
  util.error(string.format("apply_chat_template: no chat template named %q (this tokenizer has: %s)", choice,
    #names > 0 and table.concat(names, ", ") or "none"))
end

-- The variables a template sees besides messages, as transformers passes them.
local function template_context(self, opts)
  local ctx = {}
  for _, role in ipairs({"bos", "eos", "pad", "unk"}) do
    local id = self[role .. "_id"]
    if id then ctx[role .. "_token"] = bpe.token_bytes(self._bpe, id) end
  end
  ctx.tools, ctx.documents = opts.tools, opts.documents
  for k, v in pairs(opts.variables or {}) do ctx[k] = v end
  return ctx
end

--- Applies the chat template to messages (a list of {role = ..., content =
-- ...}; other fields reach the template too).  With the tokenizer's own
-- Jinja template (a Hugging Face folder's chat_template, or
-- opts.chat_template) the rendering is transformers'; lualign's own
-- tokenizers use the built-in layout (docs/tokenizer.md).
-- opts: add_generation_prompt (default false); tokenize (default true):
-- return ids and the assistant mask (1 on the tokens the assistant wrote),
-- or with false the text; chat_template (a template's name, or a template);
-- tools, documents, variables (more template variables, e.g.
-- {enable_thinking = false}); split_special_tokens (built-in layout only).
function Tokenizer:apply_chat_template(messages, opts)
  opts = util.check_options("apply_chat_template", opts, CHAT_OPTIONS)
  if type(messages) ~= "table" then util.error("apply_chat_template: messages must be a list of {role, content}") end
  for i, m in ipairs(messages) do
    if type(m) ~= "table" or type(m.role) ~= "string" then
      util.error(string.format("apply_chat_template: message %d must be a table with a string field role", i))
    end
  end
  local src = pick_template(self, opts.chat_template)
  if not src then
    if opts.tokenize == false then return self:chat_text(messages, opts) end
    return builtin_chat(self, messages, opts)
  end
  if opts.split_special_tokens then
    util.error("apply_chat_template: split_special_tokens applies to the built-in layout only; a model's template "
      .. "writes its special tokens as text")
  end
  local chat = require "lualign.chat_template"
  local ctx = template_context(self, opts)
  local ok, text = pcall(chat.render, src, messages, opts.add_generation_prompt, ctx)
  if not ok then util.error("apply_chat_template: " .. tostring(text)) end
  if opts.tokenize == false then return text end
  local ids = self:encode(text)
  local ok2, spans = pcall(chat.assistant_spans, src, messages, text, opts.add_generation_prompt, ctx)
  if not ok2 then util.error(tostring(spans)) end
  local mask = chat.mask(text, ids, spans, function(s) return self:encode(s) end)
  return ids, mask
end

--- The chat template's text (apply_chat_template with tokenize = false).
function Tokenizer:chat_text(messages, opts)
  opts = opts or {}
  if self.chat_template or opts.chat_template then
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.tokenize = false
    return self:apply_chat_template(messages, o)
  end
  chat_check(self, messages, opts)
  local parts = {}
  for _, msg in ipairs(messages) do
    parts[#parts + 1] = "<|" .. msg.role .. "|>\n" .. msg.content .. "<|end|>\n"
  end
  if opts.add_generation_prompt then parts[#parts + 1] = "<|assistant|>\n" end
  return table.concat(parts)
end

----------------------------------------------------------------------------
-- Saving (tokenizer.json, as Hugging Face's tokenizers writes it)

local function json_string(s, what)
  if not utf8.len(s) then error(string.format("save: %s is not valid UTF-8 and cannot be written to JSON", what), 3) end
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
    elseif c == "\n" then return "\\n" elseif c == "\t" then return "\\t" elseif c == "\r" then return "\\r"
    else return string.format("\\u%04x", c:byte()) end
  end) .. '"'
end

-- The roles the loader would find by name alone.
local function guessed_roles(self)
  local probe = setmetatable({_bpe = self._bpe}, Tokenizer)
  probe:_assign_roles()
  return probe
end

--- Writes the tokenizer as a tokenizer.json (path names the file, or a
-- directory to write tokenizer.json into).  When bos/eos/pad were set by
-- hand to tokens that their names would not give, a tokenizer_config.json
-- naming them is written beside it.
function Tokenizer:save(path)
  if type(path) ~= "string" then error("save: expected a path", 2) end
  if self._pipeline then
    error(string.format("save: writes byte-level BPE with GPT-2's scheme; this tokenizer (from %s) has more "
      .. "(normalizer, pre-tokenizer, decoder, model options or post-processor): copy its folder instead",
      self._pipeline), 2)
  end
  if is_dir(path) then path = path .. "/tokenizer.json" end
  local ud = self._bpe
  local spellings = bpe.spellings(ud)
  local out = {}
  local function w(s) out[#out + 1] = s end
  w('{\n  "version": "1.0",\n  "truncation": null,\n  "padding": null,\n  "added_tokens": [')
  local first = true
  for id = 0, #spellings - 1 do
    if bpe.is_special(ud, id) then
      w((first and "\n" or ",\n") .. string.format('    {"id": %d, "content": %s, "single_word": false, '
        .. '"lstrip": false, "rstrip": false, "normalized": false, "special": true}', id,
        json_string(bpe.token_bytes(ud, id), "special token " .. id)))
      first = false
    end
  end
  w(first and "],\n" or "\n  ],\n")
  w('  "normalizer": null,\n')
  local pattern, prefix = bpe.pattern(ud)
  local byte_level = string.format('{"type": "ByteLevel", "add_prefix_space": %s, "trim_offsets": true, "use_regex": %%s}',
    tostring(prefix))
  if pattern == bpe.gpt2_pattern() then
    w('  "pre_tokenizer": ' .. byte_level:format("true") .. ',\n')
  else
    w(string.format('  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": '
      .. '{"Regex": %s}, "behavior": "Isolated", "invert": false}, %s]},\n',
      json_string(pattern, "the pattern"), byte_level:format("false")))
  end
  w('  "post_processor": null,\n')
  w('  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},\n')
  w('  "model": {\n    "type": "BPE",\n    "dropout": null,\n    "unk_token": null,\n'
    .. '    "continuing_subword_prefix": null,\n    "end_of_word_suffix": null,\n    "fuse_unk": false,\n'
    .. '    "byte_fallback": false,\n    "ignore_merges": false,\n    "vocab": {')
  local model_size = math.min(self._model_size or #spellings, #spellings)
  local seen = {}
  for id = 0, model_size - 1 do
    local s = spellings[id + 1]
    if not seen[s] then   -- a renamed special may repeat a spelling: keep the first id
      seen[s] = true
      w((id == 0 and "\n      " or ",\n      ") .. json_string(s, "token " .. id) .. ": " .. id)
    end
  end
  w('\n    },\n    "merges": [')
  local merges = bpe.merges(ud)
  local pairs_form = false
  for _, mg in ipairs(merges) do
    if spellings[mg[1] + 1]:find(" ", 1, true) or spellings[mg[2] + 1]:find(" ", 1, true) then pairs_form = true end
  end
  for r, mg in ipairs(merges) do
    local a, b = spellings[mg[1] + 1], spellings[mg[2] + 1]
    local item = pairs_form and ("[" .. json_string(a, "merge") .. ", " .. json_string(b, "merge") .. "]")
      or json_string(a .. " " .. b, "merge")
    w((r == 1 and "\n      " or ",\n      ") .. item)
  end
  w('\n    ]\n  }\n}\n')
  local f, err = io.open(path, "wb")
  if not f then error("save: cannot open " .. err, 2) end
  f:write(table.concat(out))
  f:close()
  -- Roles that names alone would not give back go to tokenizer_config.json.
  local g = guessed_roles(self)
  if g.bos_id ~= self.bos_id or g.eos_id ~= self.eos_id or g.pad_id ~= self.pad_id then
    local dir = path:match("^(.*)[/\\]") or "."
    local cfg = {}
    for _, role in ipairs({"bos", "eos", "pad"}) do
      local id = self[role .. "_id"]
      cfg[#cfg + 1] = string.format('  "%s_token": %s', role,
        id and json_string(bpe.token_bytes(ud, id), role .. " token") or "null")
    end
    local cf = assert(io.open(dir .. "/tokenizer_config.json", "wb"))
    cf:write("{\n" .. table.concat(cfg, ",\n") .. "\n}\n")
    cf:close()
  end
  return path
end

return M
