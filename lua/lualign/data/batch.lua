--- Tokenising, truncating, padding, packing and shuffling examples into batches
-- of tensors.  See docs/data.md for the layout of every batch and the rules.
--
-- Tokenizer contract (duck-typed):  tok:encode(text) -> list of 0-based ids,
-- tok.eos_id / tok.bos_id / tok.pad_id (each may be nil), and for chat examples
-- tok:apply_chat_template(messages, {add_generation_prompt = bool}) -> ids, mask
-- (mask: list of 0/1, 1 on the assistant tokens that are trained on).

local M = {}

local IGNORE = -100
M.IGNORE_INDEX = IGNORE

local la_cache
local function la()
  la_cache = la_cache or require "lualign"
  return la_cache
end

----------------------------------------------------------------------------
-- A deterministic random stream of our own (splitmix64), so that shuffling
-- depends only on (seed, epoch) and never touches la.manual_seed's generator.

local Rng = {}
Rng.__index = Rng

local function mix(z)
  z = (z ~ (z >> 30)) * -4658895280553007687     -- 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * -7723592293110705685     -- 0x94D049BB133111EB
  return z ~ (z >> 31)
end

--- A generator seeded by any number of integers (e.g. seed, epoch).
function M.rng(...)
  local state = 0x2545F4914F6CDD1D
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if math.type(v) ~= "integer" then
      local iv = math.tointeger(v)
      if not iv then error("rng: seeds must be integers, got " .. tostring(v), 2) end
      v = iv
    end
    state = mix(state ~ mix(v + i * -7046029254386353131))
  end
  return setmetatable({state = state}, Rng)
end

--- The next 64-bit value.
function Rng:next()
  self.state = self.state + -7046029254386353131  -- 0x9E3779B97F4A7C15
  return mix(self.state)
end

--- A uniform integer in [1, n].
function Rng:int(n)
  return (self:next() >> 1) % n + 1
end

--- A uniform float in [0, 1).
function Rng:float()
  return (self:next() >> 11) * (1.0 / 9007199254740992.0)
end

--- A shuffled copy of list (Fisher-Yates).
function Rng:shuffle(list)
  local out = table.move(list, 1, #list, 1, {})
  for i = #out, 2, -1 do
    local j = self:int(i)
    out[i], out[j] = out[j], out[i]
  end
  return out
end

--- The permutation 1..n for an epoch: seeded by (seed, epoch) only.
function M.permutation(n, seed, epoch)
  local ids = {}
  for i = 1, n do ids[i] = i end
  return M.rng(seed or 0, epoch or 1):shuffle(ids)
end

----------------------------------------------------------------------------
-- Tokenising

local function encode(tok, text)
  local ids = tok:encode(text)
  if type(ids) ~= "table" then error("tokenizer: encode must return a list of ids", 0) end
  return ids
end

local function append(dst, src, i, j)
  return table.move(src, i or 1, j or #src, #dst + 1, dst)
end

--- The id used to pad: the tokenizer's pad_id, else its eos_id, else 0.
local function pad_value(tok)
  return tok.pad_id or tok.eos_id or 0
end
M.pad_value = pad_value

local function bos_list(tok, opts)
  if opts.add_bos and tok.bos_id then return {tok.bos_id} end
  return {}
end

local function add_eos(tok, opts) return opts.add_eos ~= false and tok.eos_id ~= nil end

--- Splits a chat-template encoding into the part before the first trained token
-- (the "prompt") and the rest (the "completion", with its mask).
local function split_template(tok, messages)
  if type(tok.apply_chat_template) ~= "function" then
    error("encode_sft: messages examples need a tokenizer with apply_chat_template", 0)
  end
  local ids, mask = tok:apply_chat_template(messages, {add_generation_prompt = false})
  if type(ids) ~= "table" or type(mask) ~= "table" or #ids ~= #mask then
    error("tokenizer: apply_chat_template must return ids and a mask of the same length", 0)
  end
  local first
  for i = 1, #mask do
    if mask[i] ~= 0 then first = i; break end
  end
  if not first then error("tokenizer: apply_chat_template marked no assistant token", 0) end
  local prompt = table.move(ids, 1, first - 1, 1, {})
  local comp = table.move(ids, first, #ids, 1, {})
  local cmask = {}
  for i = first, #ids do cmask[#cmask + 1] = mask[i] ~= 0 and 1 or 0 end
  return prompt, comp, cmask
end

--- Encodes one SFT example as {prompt = ids, completion = ids, cmask = 0/1 list}.
-- prompt/completion examples are encoded separately and joined (EOS appended to
-- the completion), after opts.prompt_format / opts.completion_format ("%s" is
-- replaced by the text; or a function); messages examples, or any example with
-- opts.chat, go through tok:apply_chat_template.
local function format(fmt, text)
  if fmt == nil then return text end
  if type(fmt) == "function" then return fmt(text) end
  return (fmt:gsub("%%s", function() return text end))
end
M.format = format

--- Encodes one SFT example (prompt/completion or messages) for training:
-- returns {prompt = ids, completion = ids, cmask = 0/1 list of trained tokens}.
function M.encode_sft(tok, ex, opts)
  opts = opts or {}
  if ex.prompt and ex.completion and not opts.chat then
    local comp = encode(tok, format(opts.completion_format, ex.completion))
    if add_eos(tok, opts) then comp[#comp + 1] = tok.eos_id end
    local cmask = {}
    for i = 1, #comp do cmask[i] = 1 end
    return {prompt = encode(tok, format(opts.prompt_format, ex.prompt)), completion = comp, cmask = cmask}
  end
  local messages = ex.messages
  if ex.prompt and ex.completion then
    messages = {{role = "user", content = ex.prompt}, {role = "assistant", content = ex.completion}}
  end
  if type(messages) ~= "table" or #messages == 0 then
    error("encode_sft: the example has neither prompt/completion nor messages", 2)
  end
  local prompt, comp, cmask = split_template(tok, messages)
  return {prompt = prompt, completion = comp, cmask = cmask}
end

----------------------------------------------------------------------------
-- Truncation.  One rule for every format (docs/data.md, "Truncation"):
--  1. a completion longer than max_completion_len keeps its first tokens (a cut
--     completion loses its EOS, so the model is not taught to stop there);
--  2. a prompt longer than max_prompt_len keeps its last tokens;
--  3. if bos + prompt + longest completion is still longer than max_len, the
--     prompt is cut from the left, but not below min_prompt_len tokens (default
--     max_len // 2, or the whole prompt when shorter), then completions are cut
--     from the right to fit.

local function keep_last(list, n)
  if #list <= n then return list end
  return table.move(list, #list - n + 1, #list, 1, {})
end

local function keep_first(list, n)
  if #list <= n then return list end
  return table.move(list, 1, n, 1, {})
end

--- Applies the truncation rule to a prompt and one or more completions (each
-- {ids, mask}); returns the new prompt and completions and whether anything was cut.
function M.truncate(prompt, completions, opts, n_bos)
  n_bos = n_bos or 0
  local cut = false
  local comps = {}
  for k, c in ipairs(completions) do
    local ids, mask = c[1], c[2]
    if opts.max_completion_len and #ids > opts.max_completion_len then
      ids, mask, cut = keep_first(ids, opts.max_completion_len), keep_first(mask, opts.max_completion_len), true
    end
    comps[k] = {ids, mask}
  end
  if opts.max_prompt_len and #prompt > opts.max_prompt_len then
    prompt, cut = keep_last(prompt, opts.max_prompt_len), true
  end
  local max_len = opts.max_len
  if max_len then
    local longest = 0
    for _, c in ipairs(comps) do longest = math.max(longest, #c[1]) end
    if n_bos + #prompt + longest > max_len then
      local floor = math.min(#prompt, opts.min_prompt_len or max_len // 2)
      local keep = math.max(max_len - n_bos - longest, floor)
      keep = math.max(0, math.min(keep, max_len - n_bos))
      if keep < #prompt then prompt, cut = keep_last(prompt, keep), true end
      local room = max_len - n_bos - #prompt
      for k, c in ipairs(comps) do
        if #c[1] > room then comps[k], cut = {keep_first(c[1], room), keep_first(c[2], room)}, true end
      end
    end
  end
  return prompt, comps, cut
end

--- One training sequence from an encoded example: ids and the 0/1 label mask.
local function sft_sequence(tok, enc, opts)
  local bos = bos_list(tok, opts)
  local prompt, comps, cut = M.truncate(enc.prompt, {{enc.completion, enc.cmask}}, opts, #bos)
  local ids, lmask = {}, {}
  append(ids, bos); append(ids, prompt); append(ids, comps[1][1])
  for _ = 1, #bos + #prompt do lmask[#lmask + 1] = 0 end
  append(lmask, comps[1][2])
  return ids, lmask, cut
end

----------------------------------------------------------------------------
-- Building tensors

local function matrix(rows, dtype)
  return la().tensor(rows, dtype)
end

-- Fills the row tables for one right-padded sequence.
local function targets_row(ids, lmask, seg, T)
  local labels, targets, lossm = {}, {}, {}
  for t = 1, T do
    labels[t] = (lmask[t] == 1) and ids[t] or IGNORE
    local nxt = t + 1
    if lmask[nxt] == 1 and (seg == nil or seg[nxt] == seg[t]) then
      targets[t], lossm[t] = ids[nxt], 1.0
    else
      targets[t], lossm[t] = IGNORE, 0.0
    end
  end
  return labels, targets, lossm
end

local function padded(list, T, value)
  local out = table.move(list, 1, #list, 1, {})
  for t = #list + 1, T do out[t] = value end
  return out
end

local function batch_len(lengths, opts)
  local T = 1
  for _, n in ipairs(lengths) do if n > T then T = n end end
  if opts.pad_to_multiple_of then
    local m = opts.pad_to_multiple_of
    T = ((T + m - 1) // m) * m
  end
  if opts.pad_to_max_len and opts.max_len then T = math.max(T, opts.max_len) end
  return T
end

--- SFT batch from encoded examples (see encode_sft): right padding.
-- Fields: ids, attention_mask, labels (unshifted, -100 off the completion),
-- targets (shifted: what position t predicts, -100 where no loss), loss_mask
-- (float32, aligned with targets), position_ids, lengths, n_loss_tokens, truncated.
function M.collate_sft(tok, encoded, opts)
  opts = opts or {}
  local pad = pad_value(tok)
  local seqs, lengths, truncated = {}, {}, 0
  for i, enc in ipairs(encoded) do
    local ids, lmask, cut = sft_sequence(tok, enc, opts)
    seqs[i] = {ids, lmask}
    lengths[i] = #ids
    if cut then truncated = truncated + 1 end
  end
  local T = batch_len(lengths, opts)
  local R = {ids = {}, attention_mask = {}, labels = {}, targets = {}, loss_mask = {}, position_ids = {}}
  local n_loss = 0
  for i, s in ipairs(seqs) do
    local ids, lmask = s[1], s[2]
    local n = #ids
    local labels, targets, lossm = targets_row(ids, lmask, nil, T)
    local att, pos = {}, {}
    for t = 1, T do
      att[t] = t <= n and 1.0 or 0.0
      pos[t] = t <= n and t - 1 or 0
      n_loss = n_loss + lossm[t]
    end
    R.ids[i] = padded(ids, T, pad)
    R.attention_mask[i], R.labels[i], R.targets[i], R.loss_mask[i], R.position_ids[i] =
      att, labels, targets, lossm, pos
  end
  return {
    ids = matrix(R.ids, "int64"), attention_mask = matrix(R.attention_mask, "float32"),
    labels = matrix(R.labels, "int64"), targets = matrix(R.targets, "int64"),
    loss_mask = matrix(R.loss_mask, "float32"), position_ids = matrix(R.position_ids, "int64"),
    lengths = lengths, n_loss_tokens = math.tointeger(n_loss), truncated = truncated,
  }
end

--- Packs encoded examples greedily, in the given order, into rows of max_len
-- tokens (a new row starts when the next sequence does not fit).  Returns a list
-- of rows, each a list of {ids, lmask} sequences.
function M.pack(tok, encoded, opts)
  local max_len = opts.max_len
  if not max_len then error("pack: packing needs max_len", 0) end
  local rows, row, used, truncated = {}, nil, 0, 0
  for _, enc in ipairs(encoded) do
    local ids, lmask, cut = sft_sequence(tok, enc, opts)
    if cut then truncated = truncated + 1 end
    if row == nil or used + #ids > max_len then
      row = {}
      rows[#rows + 1] = row
      used = 0
    end
    row[#row + 1] = {ids, lmask, cut}
    used = used + #ids
  end
  return rows, truncated
end

--- A packed SFT batch: rows of several sequences that must not attend to each
-- other.  As collate_sft, plus segment_ids (1, 2, ... per row, 0 on padding) and
-- position_ids restarting at 0 in each segment; targets never cross segments.
function M.collate_packed(tok, rows, opts)
  local pad = pad_value(tok)
  local T = opts.max_len
  local R = {ids = {}, attention_mask = {}, labels = {}, targets = {}, loss_mask = {},
             position_ids = {}, segment_ids = {}}
  local n_loss, counts, truncated = 0, {}, 0
  for i, row in ipairs(rows) do
    local ids, lmask, seg, pos = {}, {}, {}, {}
    for s, seq in ipairs(row) do
      if seq[3] then truncated = truncated + 1 end
      for t = 1, #seq[1] do
        ids[#ids + 1] = seq[1][t]
        lmask[#lmask + 1] = seq[2][t]
        seg[#seg + 1] = s
        pos[#pos + 1] = t - 1
      end
    end
    local n = #ids
    counts[i] = #row
    for t = n + 1, T do seg[t], pos[t] = 0, 0 end
    local labels, targets, lossm = targets_row(ids, lmask, seg, T)
    local att = {}
    for t = 1, T do
      att[t] = t <= n and 1.0 or 0.0
      n_loss = n_loss + lossm[t]
    end
    R.ids[i] = padded(ids, T, pad)
    R.attention_mask[i], R.labels[i], R.targets[i], R.loss_mask[i] = att, labels, targets, lossm
    R.position_ids[i], R.segment_ids[i] = pos, seg
  end
  return {
    ids = matrix(R.ids, "int64"), attention_mask = matrix(R.attention_mask, "float32"),
    labels = matrix(R.labels, "int64"), targets = matrix(R.targets, "int64"),
    loss_mask = matrix(R.loss_mask, "float32"), position_ids = matrix(R.position_ids, "int64"),
    segment_ids = matrix(R.segment_ids, "int64"), segments_per_row = counts,
    n_loss_tokens = math.tointeger(n_loss), truncated = truncated,
  }
end

--- The (B, T, T) bool mask for a packed batch: query t may attend to key s when
-- both are in the same (non-padding) segment and s <= t.  Padding rows attend to
-- themselves only, so a softmax over them stays finite.
function M.packed_attention_mask(segment_ids)
  local seg = segment_ids:totable()
  local out = {}
  for b, row in ipairs(seg) do
    local T = #row
    local mb = {}
    for t = 1, T do
      local r = {}
      local st = row[t]
      for s = 1, T do
        r[s] = (s <= t and row[s] == st and (st ~= 0 or s == t))
      end
      mb[t] = r
    end
    out[b] = mb
  end
  return la().tensor(out, "bool")
end

----------------------------------------------------------------------------
-- Preference pairs

--- Encodes a preference example: prompt ids, and chosen/rejected completion ids
-- (each with EOS appended when the tokenizer has one).  With opts.chat, the
-- prompt goes through the chat template (user turn + generation prompt).
-- Conversational examples (with prompt_messages) always do, as
-- lualign.data.conversation describes.
function M.encode_preference(tok, ex, opts)
  opts = opts or {}
  if ex.prompt_messages then return require("lualign.data.conversation").encode_preference(tok, ex) end
  local prompt
  if opts.chat then
    if type(tok.apply_chat_template) ~= "function" then
      error("chat = true needs a tokenizer with apply_chat_template", 0)
    end
    prompt = tok:apply_chat_template({{role = "user", content = ex.prompt}}, {add_generation_prompt = true})
  else
    prompt = encode(tok, ex.prompt)
  end
  local function side(text)
    local ids = encode(tok, text)
    if add_eos(tok, opts) then ids[#ids + 1] = tok.eos_id end
    return ids
  end
  return {prompt = prompt, chosen = side(ex.chosen), rejected = side(ex.rejected), example = ex}
end

local function ones(n)
  local t = {}
  for i = 1, n do t[i] = 1 end
  return t
end

--- A preference batch: chosen and rejected sequences (prompt + completion),
-- right-padded to one common length T, so that they can be concatenated into one
-- (2B, T) forward pass.  Each side has ids, attention_mask, completion_mask
-- (unshifted), targets and loss_mask (shifted, for sequence log-probs); plus
-- p (B,) float32 in [0.5, 1], margin (B,) float32 (0 where none was given).
function M.collate_preference(tok, encoded, opts)
  opts = opts or {}
  local pad = pad_value(tok)
  local bos = bos_list(tok, opts)
  local sides = {chosen = {}, rejected = {}}
  local lengths = {}
  local p, margin, flipped, soft, prompt_lengths, truncated = {}, {}, {}, {}, {}, 0
  for i, enc in ipairs(encoded) do
    local prompt, comps, cut = M.truncate(enc.prompt,
      {{enc.chosen, ones(#enc.chosen)}, {enc.rejected, ones(#enc.rejected)}}, opts, #bos)
    if cut then truncated = truncated + 1 end
    for k, name in ipairs({"chosen", "rejected"}) do
      local ids, cm = {}, {}
      append(ids, bos); append(ids, prompt); append(ids, comps[k][1])
      for _ = 1, #bos + #prompt do cm[#cm + 1] = 0 end
      append(cm, comps[k][2])
      sides[name][i] = {ids, cm}
      lengths[#lengths + 1] = #ids
    end
    local ex = enc.example or {}
    p[i] = ex.p or 1.0
    margin[i] = ex.margin or 0.0
    flipped[i] = ex.flipped or false
    soft[i] = ex.soft or false
    prompt_lengths[i] = #bos + #prompt
  end
  local T = batch_len(lengths, opts)
  local out = {p = matrix(p, "float32"), margin = matrix(margin, "float32"),
               flipped = flipped, soft = soft, prompt_lengths = prompt_lengths, truncated = truncated}
  for name, seqs in pairs(sides) do
    local R = {ids = {}, attention_mask = {}, completion_mask = {}, targets = {}, loss_mask = {}}
    local lens = {}
    for i, s in ipairs(seqs) do
      local ids, cm = s[1], s[2]
      local n = #ids
      lens[i] = n
      local _, targets, lossm = targets_row(ids, cm, nil, T)
      local att, cmp = {}, {}
      for t = 1, T do
        att[t] = t <= n and 1.0 or 0.0
        cmp[t] = (cm[t] or 0) + 0.0
      end
      R.ids[i] = padded(ids, T, pad)
      R.attention_mask[i], R.completion_mask[i], R.targets[i], R.loss_mask[i] = att, cmp, targets, lossm
    end
    out[name] = {
      ids = matrix(R.ids, "int64"), attention_mask = matrix(R.attention_mask, "float32"),
      completion_mask = matrix(R.completion_mask, "float32"), targets = matrix(R.targets, "int64"),
      loss_mask = matrix(R.loss_mask, "float32"), lengths = lens,
    }
  end
  return out
end

----------------------------------------------------------------------------
-- Prompts for generation

--- Encodes a prompt example (chat template with a generation prompt when opts.chat).
function M.encode_prompt(tok, ex, opts)
  opts = opts or {}
  local ids
  if opts.chat then
    if type(tok.apply_chat_template) ~= "function" then
      error("chat = true needs a tokenizer with apply_chat_template", 0)
    end
    ids = tok:apply_chat_template({{role = "user", content = ex.prompt}}, {add_generation_prompt = true})
  else
    ids = encode(tok, ex.prompt)
  end
  return {prompt = ids, example = ex}
end

--- A left-padded prompt batch for generation: ids, attention_mask, position_ids
-- (0 at each prompt's first real token), lengths, prompts (the strings).
-- A prompt longer than max_prompt_len (or max_len) keeps its last tokens.
function M.collate_prompts(tok, encoded, opts)
  opts = opts or {}
  local pad = pad_value(tok)
  local bos = bos_list(tok, opts)
  local limit = opts.max_prompt_len or opts.max_len
  local seqs, lengths, prompts, truncated = {}, {}, {}, 0
  for i, enc in ipairs(encoded) do
    local p = enc.prompt
    if limit and #bos + #p > limit then
      p = keep_last(p, math.max(0, limit - #bos))
      truncated = truncated + 1
    end
    local ids = {}
    append(ids, bos); append(ids, p)
    if #ids == 0 then error("collate_prompts: prompt " .. i .. " encodes to no tokens", 0) end
    seqs[i], lengths[i] = ids, #ids
    prompts[i] = enc.example and enc.example.prompt
  end
  local T = batch_len(lengths, opts)
  local ids_r, att_r, pos_r = {}, {}, {}
  for i, ids in ipairs(seqs) do
    local n, row, att, pos = #ids, {}, {}, {}
    local off = T - n
    for t = 1, T do
      if t <= off then row[t], att[t], pos[t] = pad, 0.0, 0
      else row[t], att[t], pos[t] = ids[t - off], 1.0, t - off - 1 end
    end
    ids_r[i], att_r[i], pos_r[i] = row, att, pos
  end
  return {ids = matrix(ids_r, "int64"), attention_mask = matrix(att_r, "float32"),
          position_ids = matrix(pos_r, "int64"), lengths = lengths, prompts = prompts,
          truncated = truncated}
end

----------------------------------------------------------------------------
-- Language-model blocks (pretraining on a token stream)

--- Cuts a token stream into non-overlapping blocks of block_size + 1 tokens
-- (inputs and their next-token targets); a short tail is dropped.
function M.lm_blocks(ids, block_size)
  local blocks = {}
  local i = 1
  while i + block_size <= #ids do
    blocks[#blocks + 1] = i
    i = i + block_size
  end
  return blocks
end

--- A language-model batch from a token stream: for each start s, ids are the
-- block_size tokens from s, targets the same shifted by one (both int64).
function M.collate_lm(stream, starts, block_size)
  local x, y = {}, {}
  for b, s in ipairs(starts) do
    x[b] = table.move(stream, s, s + block_size - 1, 1, {})
    y[b] = table.move(stream, s + 1, s + block_size, 1, {})
  end
  return {ids = matrix(x, "int64"), targets = matrix(y, "int64")}
end

----------------------------------------------------------------------------
-- How many examples the length limits cut

local LIMITS = {"max_len", "max_prompt_len", "max_completion_len"}

--- The length limits in opts as text ("max_len 128"), or nil when none is set.
function M.limits_text(opts)
  local parts = {}
  for _, k in ipairs(LIMITS) do
    if opts[k] then parts[#parts + 1] = k .. " " .. tostring(opts[k]) end
  end
  return #parts > 0 and table.concat(parts, ", ") or nil
end

--- The number of encoded examples of a kind ("sft", "preference" or
-- "prompts") that the truncation rule cuts under opts.
function M.count_truncated(kind, tok, encoded, opts)
  if not M.limits_text(opts) then return 0 end
  local n_bos, n = #bos_list(tok, opts), 0
  for _, enc in ipairs(encoded) do
    local cut
    if kind == "sft" then
      cut = select(3, sft_sequence(tok, enc, opts))
    elseif kind == "preference" then
      cut = select(3, M.truncate(enc.prompt, {{enc.chosen, ones(#enc.chosen)}, {enc.rejected, ones(#enc.rejected)}},
                                 opts, n_bos))
    else
      local limit = opts.max_prompt_len or opts.max_len
      cut = limit ~= nil and n_bos + #enc.prompt > limit
    end
    if cut then n = n + 1 end
  end
  return n
end

----------------------------------------------------------------------------
-- Loaders: pre-encoded items, shuffled per epoch from (seed, epoch)

--- A loader: encoded items, a collate function, and the per-epoch order.
local Loader = {}
Loader.__index = Loader

--- A loader over `items` (already encoded) with `collate(list_of_items)`.
-- opts: batch_size, shuffle (default true), seed (default 0), drop_last, and
-- group(items_in_epoch_order) -> list of units, to pack before batching.
function M.loader(items, collate, opts)
  opts = opts or {}
  local bs = opts.batch_size or 8
  if type(bs) ~= "number" or not math.tointeger(bs) or bs < 1 then
    error("batch_size must be a positive integer, got " .. tostring(bs), 2)
  end
  return setmetatable({items = items, collate = collate, batch_size = math.tointeger(bs),
    shuffle = opts.shuffle ~= false, seed = opts.seed or 0, drop_last = opts.drop_last or false,
    group = opts.group}, Loader)
end

function Loader:__len() return #self.items end

--- The items of an epoch in order (shuffled from seed and epoch when shuffle is on),
-- grouped into batches (lists of units).
function Loader:plan(epoch)
  epoch = epoch or 1
  local order
  if self.shuffle then
    order = {}
    for k, i in ipairs(M.permutation(#self.items, self.seed, epoch)) do order[k] = self.items[i] end
  else
    order = self.items
  end
  local units = self.group and self.group(order) or order
  local batches = {}
  for s = 1, #units, self.batch_size do
    local e = math.min(#units, s + self.batch_size - 1)
    if e - s + 1 == self.batch_size or not self.drop_last then
      batches[#batches + 1] = table.move(units, s, e, 1, {})
    end
  end
  return batches
end

--- Number of batches in an epoch.
function Loader:num_batches(epoch) return #self:plan(epoch) end

--- Makes this loader yield process `rank`'s share (0-based, of `size`
-- processes) of every batch: its units (examples, or packed rows) split into
-- `size` contiguous parts as evenly as they go, part `rank` collated.  The
-- plan -- which units form each batch, and in which order -- stays that of one
-- process, so the processes together see exactly its batches.  Returns self.
function Loader:shard(rank, size)
  if math.type(rank) ~= "integer" or math.type(size) ~= "integer" or size < 1 or rank < 0 or rank >= size then
    error(string.format("shard: rank must be 0 to size - 1 and size at least 1 (got rank %s of %s)",
      tostring(rank), tostring(size)), 2)
  end
  self.shard_rank, self.shard_size = rank, size
  return self
end

-- The units of this loader's share of a batch (all of them when not sharded).
local function share(self, units, k, epoch)
  local size = self.shard_size
  if not size or size == 1 then return units end
  local n = #units
  if n < size then
    error(string.format("loader: batch %d of epoch %d has %d unit(s), fewer than the %d processes "
      .. "sharing it; use batches of at least %d (or drop_last = true)", k, epoch, n, size, size), 0)
  end
  local first, last = require("lualign.dist").share(n, self.shard_rank, size)
  return table.move(units, first, last, 1, {})
end

--- Iterates over the batches of one epoch: for batch in loader:epoch(e) do ... end
function Loader:epoch(epoch)
  local batches = self:plan(epoch)
  local k = 0
  return function()
    k = k + 1
    local units = batches[k]
    if units == nil then return nil end
    local batch = self.collate(share(self, units, k, epoch or 1))
    batch.index, batch.epoch = k, epoch or 1
    return batch
  end
end

--- Endless batches over successive epochs (1, 2, ...): returns batch, epoch.
function Loader:forever(start_epoch)
  local epoch = (start_epoch or 1) - 1
  local it
  return function()
    for _ = 1, 2 do   -- a fresh epoch that yields nothing means there is no data
      if it then
        local b = it()
        if b then return b, epoch end
      end
      epoch = epoch + 1
      it = self:epoch(epoch)
    end
    local b = it()
    if b then return b, epoch end
    return nil
  end
end

M.Loader = Loader

return M
