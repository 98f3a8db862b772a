--- lualign.data: JSONL readers, batching and the bundled datasets.
--
--     local la = require "lualign"
--     for ex in la.data.preference(la.data.path("vader/modest/train.jsonl")) do ... end
--     local loader = la.data.sft_loader(la.data.path("qa/train.jsonl"), tok,
--                                       {batch_size = 16, max_len = 64, seed = 1})
--     for batch in loader:epoch(1) do ... batch.ids, batch.targets, batch.loss_mask ... end
--
-- Formats, normalisation, batch layouts and truncation rules: docs/data.md.

local jsonl = require "lualign.data.jsonl"
local batch = require "lualign.data.batch"
local util = require "lualign.util"

local M = {}

M.IGNORE_INDEX = batch.IGNORE_INDEX
M.ROLES = jsonl.ROLES

----------------------------------------------------------------------------
-- Readers

--- Iterator over the validated SFT examples of a JSONL file.  Each example has
-- `messages` (prompt/completion lines become a user and an assistant turn), plus
-- `prompt` and `completion` when the line gave them, `line`, and `meta` (other keys).
function M.sft(path) return jsonl.reader("sft", path) end

--- Iterator over the validated preference examples of a JSONL file, oriented so
-- that `chosen` is the majority side: `p` in [0.5, 1] (1 for hard labels),
-- `flipped` (true when chosen and rejected were swapped from the file), `p_raw`
-- (the file's share preferring its own "chosen"), `soft`, `votes` (oriented),
-- `votes_raw`, `margin` (oriented: negated when flipped), `line`, `meta`.
function M.preference(path) return jsonl.reader("preference", path) end

--- Iterator over the validated prompts of a JSONL file: {prompt, line, meta}.
function M.prompts(path) return jsonl.reader("prompts", path) end

--- All examples of a file as a list; kind is "sft", "preference" or "prompts".
function M.load(path, kind) return jsonl.load(kind, path) end

--- Sets the function told which fields of a file's lines its format ignores,
-- once a reader has finished the file: fn(note) with note.path, note.kind,
-- note.fields (name -> lines that have it), note.lines and note.text (one
-- line saying all that).  A recipe's run prints them; nil turns them off.
M.on_ignored_fields = jsonl.on_ignored_fields

--- Decodes and validates one line: returns the example, or nil and a message.
M.parse_line = function(kind, text) return jsonl.parse_line(kind, text) end

M.normalize_number = jsonl.normalize_number

-- The text a held-out split groups examples by: the prompt, or the messages
-- before an example's first assistant turn.
local function prompt_key(ex)
  local messages = ex.prompt_messages
  if not messages and ex.prompt == nil and ex.messages then
    messages = {}
    for _, m in ipairs(ex.messages) do
      if m.role == "assistant" then break end
      messages[#messages + 1] = m
    end
  end
  if not messages then return ex.prompt end
  local parts = {}
  for i, m in ipairs(messages) do parts[i] = m.role .. "\0" .. m.content end
  return table.concat(parts, "\1")
end

-- FNV-1a over the bytes of s, 32 bits: a digest that is the same everywhere.
local function fnv1a(s)
  local h = 2166136261
  for i = 1, #s do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  return h
end

--- Splits examples (preference, SFT or prompts) into training and held-out
-- lists by their prompt: a prompt is held out, with every example that has
-- it, when the FNV-1a digest of its text falls in the first `fraction` of the
-- 32-bit range.  So the split depends on the prompts alone -- not on a seed,
-- nor on the order of the lines -- and no prompt is on both sides.  `key`
-- (optional) is a function of an example giving the text to digest instead
-- of its prompt: examples with the same key stay together.  Returns
-- train, held_out (each in the examples' order).
function M.split_by_prompt(examples, fraction, key)
  if type(fraction) ~= "number" or not (fraction >= 0 and fraction <= 1) then
    error("split_by_prompt: fraction must be a number in [0, 1] (got " .. tostring(fraction) .. ")", 2)
  end
  key = key or prompt_key
  local train, held_out = {}, {}
  local limit = fraction * 2 ^ 32
  for i, ex in ipairs(examples) do
    local k = key(ex)
    if type(k) ~= "string" then
      error(string.format("split_by_prompt: the key of example %d is a %s, not a string", i, type(k)), 2)
    end
    if fnv1a(k) < limit then held_out[#held_out + 1] = ex else train[#train + 1] = ex end
  end
  return train, held_out
end

--- The whole text of a file, with a UTF-8 BOM removed and CRLF turned into LF.
function M.read_text(path)
  local f, err = io.open(path, "rb")
  if not f then error("read_text: cannot open " .. tostring(err), 2) end
  local s = f:read("a")
  f:close()
  if s:sub(1, 3) == "\239\187\191" then s = s:sub(4) end
  return (s:gsub("\r\n", "\n"))
end

----------------------------------------------------------------------------
-- The bundled datasets

local function this_dir()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) ~= "@" then return nil end
  return src:sub(2):match("^(.*)/[^/]*$") or "."
end

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close(); return true end
  return false
end

--- The directories searched for bundled data, in order: $LUALIGN_DATA, the
-- installed copy (<luadir>/lualign/datasets, put there by `make install`), and
-- the checkout's data/ (next to lua/).
function M.search_dirs()
  local dirs = {}
  local env = os.getenv("LUALIGN_DATA")
  if env and env ~= "" then dirs[#dirs + 1] = env end
  local here = this_dir()                          -- .../lualign/data
  if here then
    local pkg = here:match("^(.*)/data$") or (here .. "/..")
    dirs[#dirs + 1] = pkg .. "/datasets"
    local root = pkg:match("^(.*)/lua/lualign$")
    if root then dirs[#dirs + 1] = (root == "" and "." or root) .. "/data"
    elseif pkg == "lua/lualign" then dirs[#dirs + 1] = "data" end
  end
  return dirs
end

--- The directory holding the bundled datasets (the first search dir that has
-- data/README.md), or nil and the list of places tried.
function M.root()
  local dirs = M.search_dirs()
  for _, d in ipairs(dirs) do
    if exists(d .. "/README.md") then return d end
  end
  return nil, dirs
end

--- Path of a bundled file, e.g. la.data.path("sentiment/train.jsonl"); raises an
-- error listing the places searched when it is not found.
function M.path(rel)
  if type(rel) ~= "string" or rel == "" then error("data.path: expected a relative path", 2) end
  local dirs = M.search_dirs()
  for _, d in ipairs(dirs) do
    local p = d .. "/" .. rel
    if exists(p) then return p end
  end
  error("data.path: " .. rel .. " not found in " .. table.concat(dirs, ", ")
    .. " (set LUALIGN_DATA to the data directory)", 2)
end

----------------------------------------------------------------------------
-- Batching

M.rng = batch.rng
M.permutation = batch.permutation
M.truncate = batch.truncate
M.encode_sft = batch.encode_sft
M.encode_preference = batch.encode_preference
M.encode_prompt = batch.encode_prompt
M.collate_sft = batch.collate_sft
M.collate_packed = batch.collate_packed
M.collate_preference = batch.collate_preference
M.collate_prompts = batch.collate_prompts
M.packed_attention_mask = batch.packed_attention_mask
M.pad_value = batch.pad_value
M.loader = batch.loader

local function examples_of(source, kind, what)
  if type(source) == "string" then return jsonl.load(kind, source) end
  if type(source) == "function" then
    local list = {}
    for ex in source do list[#list + 1] = ex end
    return list
  end
  if type(source) == "table" then return source end
  error(what .. ": expected a path, a list of examples or an iterator, got " .. type(source), 3)
end

local function check_tok(tok, what)
  if (type(tok) ~= "table" and type(tok) ~= "userdata") or tok.encode == nil then
    error(what .. ": expected a tokenizer with :encode(text), got " .. type(tok), 3)
  end
end

-- The options each loader takes (an unknown one is an error with a did-you-mean).
local BATCHING = {"batch_size", "shuffle", "seed", "drop_last", "pad_to_multiple_of", "pad_to_max_len"}
local LIMITS = {"max_len", "max_prompt_len", "max_completion_len", "min_prompt_len"}
local function option_list(...)
  local out = {}
  for _, list in ipairs({...}) do table.move(list, 1, #list, #out + 1, out) end
  return out
end
M.loader_options = {
  sft = option_list(BATCHING, LIMITS, {"pack", "chat", "add_bos", "add_eos", "prompt_format", "completion_format"}),
  preference = option_list(BATCHING, LIMITS, {"chat", "add_bos", "add_eos"}),
  prompts = option_list(BATCHING, {"max_len", "max_prompt_len", "chat", "add_bos"}),
  lm = {"block_size", "batch_size", "shuffle", "seed", "drop_last"},
}

-- The loader options a data loader passes through to batch.loader.
local function loader_opts(opts)
  return {batch_size = opts.batch_size, shuffle = opts.shuffle, seed = opts.seed, drop_last = opts.drop_last}
end

-- Names a loader after its file, and records how many of its examples the
-- length limits cut: loader.truncated, and loader.limits ("max_len 128", or
-- nil when no limit is set).
local function describe(loader, source, kind, tok, encoded, opts)
  loader.name = type(source) == "string" and source or nil
  loader.limits = batch.limits_text(opts)
  loader.truncated = batch.count_truncated(kind, tok, encoded, opts)
  return loader
end

-- A collate function whose batches also carry the examples they were made from.
local function with_examples(collate)
  return function(list)
    local b = collate(list)
    b.examples = {}
    for i, e in ipairs(list) do b.examples[i] = e.example end
    return b
  end
end

--- SFT batches.  source: a JSONL path, a list of examples or an iterator.
-- opts: batch_size (8), max_len, max_prompt_len, max_completion_len,
-- min_prompt_len, pack (false), shuffle (true), seed (0), drop_last, chat,
-- add_bos (false), add_eos (true), pad_to_multiple_of, pad_to_max_len.
-- Every example is tokenised once, here.
function M.sft_loader(source, tok, opts)
  opts = util.check_options("sft_loader", opts, M.loader_options.sft)
  check_tok(tok, "sft_loader")
  local examples = examples_of(source, "sft", "sft_loader")
  local encoded = {}
  for i, ex in ipairs(examples) do
    encoded[i] = batch.encode_sft(tok, ex, opts)
    encoded[i].example = ex
  end
  local lopts = loader_opts(opts)
  if opts.pack then
    if not opts.max_len then error("sft_loader: pack = true needs max_len", 2) end
    lopts.group = function(list) return (batch.pack(tok, list, opts)) end
    return describe(batch.loader(encoded, function(rows) return batch.collate_packed(tok, rows, opts) end, lopts),
                    source, "sft", tok, encoded, opts)
  end
  return describe(batch.loader(encoded, with_examples(function(list) return batch.collate_sft(tok, list, opts) end),
                               lopts), source, "sft", tok, encoded, opts)
end

--- Preference batches (see collate_preference).  opts as sft_loader's (no packing).
function M.preference_loader(source, tok, opts)
  opts = util.check_options("preference_loader", opts, M.loader_options.preference)
  check_tok(tok, "preference_loader")
  local examples = examples_of(source, "preference", "preference_loader")
  local encoded = {}
  for i, ex in ipairs(examples) do encoded[i] = batch.encode_preference(tok, ex, opts) end
  return describe(batch.loader(encoded, with_examples(function(list) return batch.collate_preference(tok, list, opts) end),
                               loader_opts(opts)), source, "preference", tok, encoded, opts)
end

--- Left-padded prompt batches for generation.  opts: batch_size, max_prompt_len
-- (or max_len), shuffle (true), seed, drop_last, chat, add_bos.
function M.prompt_loader(source, tok, opts)
  opts = util.check_options("prompt_loader", opts, M.loader_options.prompts)
  check_tok(tok, "prompt_loader")
  local examples = examples_of(source, "prompts", "prompt_loader")
  local encoded = {}
  for i, ex in ipairs(examples) do encoded[i] = batch.encode_prompt(tok, ex, opts) end
  return describe(batch.loader(encoded, with_examples(function(list) return batch.collate_prompts(tok, list, opts) end),
                               loader_opts(opts)), source, "prompts", tok, encoded, opts)
end

--- Language-model batches from a text (string) or a list of token ids: the stream
-- is cut into non-overlapping blocks of block_size inputs (+1 target), shuffled
-- per epoch.  Batches have ids and targets (B, block_size) int64.
-- opts: block_size (required), batch_size, shuffle, seed, drop_last.
function M.lm_loader(source, tok, opts)
  opts = util.check_options("lm_loader", opts, M.loader_options.lm)
  local bsz = opts.block_size
  if not bsz or bsz < 1 then error("lm_loader: block_size is required", 2) end
  local stream = source
  if type(source) == "string" then
    check_tok(tok, "lm_loader")
    stream = tok:encode(source)
  end
  if type(stream) ~= "table" then error("lm_loader: expected a text or a list of ids", 2) end
  local starts = batch.lm_blocks(stream, bsz)
  if #starts == 0 then
    error(string.format("lm_loader: %d tokens are too few for one block of %d", #stream, bsz), 2)
  end
  local loader = batch.loader(starts, function(list) return batch.collate_lm(stream, list, bsz) end,
    loader_opts(opts))
  loader.stream = stream
  return loader
end

----------------------------------------------------------------------------
-- The held-out sentiment judge built on the bundled VADER ratings

--- The held-out judge (bundled vader/judge.tsv, or path): a lexicon of panel-B
-- ratings never used for training labels, with :score(text), :prob(a, b) and
-- :prefers(a, b).  See data/README.md.
function M.judge(path)
  return require("lualign.data.judge").load(path or M.path("vader/judge.tsv"))
end

return M
