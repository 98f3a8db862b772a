--- Autoregressive generation for decoder models (model:generate).
--
--     local out = model:generate(prompts, {max_new_tokens = 32, temperature = 0.7, top_p = 0.9,
--                                          eos_id = tok.eos_id, return_logprobs = true})
--
-- prompts: a list of Lua lists of 0-based ids (lengths may differ), or a
-- (B, T) integer tensor.  Rows are left-padded, with an attention mask and
-- per-row positions counted from each row's first real token, so that
-- padding changes nothing.  opts:
--   max_new_tokens (32); temperature (1; 0 = greedy); top_k (0 = off);
--   top_p (1 = off); eos_id (an id or a list of ids: stop a row when one is
--   produced); pad_id (what finished rows get; default the first EOS id or
--   0); repetition_penalty (1 = off; Hugging Face's rule: the logit of every
--   id already in the row, prompt included, is divided by it when positive
--   and multiplied by it when negative); stop_strings (a list of strings:
--   stop a row once its generated text contains one, ending within the last
--   token; needs tokenizer, whose decode turns ids into text); use_cache
--   (true): keys and values of earlier positions are kept, so each step runs
--   one position; return_logprobs: log-probabilities of the chosen tokens
--   under softmax(logits / temperature) after the repetition penalty;
--   seeds (a list of one seed per row, each an integer or a list of
--   integers): row b samples from a random stream of its own seeded by
--   seeds[b] (one uniform draw per step) instead of the generator of
--   la.manual_seed, so that its tokens do not depend on which rows share its
--   batch -- a job split across processes draws what one process would.
-- A model loaded from a Hugging Face folder has model.generation_config:
-- options not given come from it as Hugging Face's generate takes them
-- (eos_token_id, pad_token_id; do_sample false or absent = greedy, else
-- temperature, top_k (default 50), top_p, repetition_penalty).
-- Returns a table: tokens (B, N) int64, logprobs (B, N) float32 (0 after a
-- row ended) when asked, lengths (tokens per row, EOS included),
-- sequences (Lua lists of each row's tokens), finished (whether EOS came),
-- prompt_length P, and batch: each prompt and its response as one left-padded
-- row, ready for a forward pass over what was generated (see prompt_response).

local core = require "lualign.core"
local util = require "lualign.util"

-- Left-pads the prompts: ids (B, P), mask (B, P) of 1/0, and the lists.
local function left_pad(prompts, pad)
  local rows = {}
  if core.is_tensor(prompts) then
    if prompts:dim() ~= 2 then util.error("generate: prompt tensor must be (batch, time)") end
    rows = prompts:long():totable()
  else
    rows = prompts
  end
  local B, P = #rows, 0
  if B == 0 then util.error("generate: no prompts") end
  for b = 1, B do
    if type(rows[b]) ~= "table" or #rows[b] == 0 then util.error("generate: prompt " .. b .. " is empty") end
    P = math.max(P, #rows[b])
  end
  local ids, mask = {}, {}
  for b = 1, B do
    local row, m, n = {}, {}, #rows[b]
    for t = 1, P do
      local src = t - (P - n)
      row[t] = src >= 1 and rows[b][src] or pad
      m[t] = src >= 1 and 1 or 0
    end
    ids[b], mask[b] = row, m
  end
  return ids, mask, B, P
end

-- Positions that start at 0 on each row's first real token.
local function positions_of(mask)
  local pos = {}
  for b, m in ipairs(mask) do
    local row, n = {}, -1
    for t = 1, #m do
      if m[t] == 1 then n = n + 1 end
      row[t] = math.max(n, 0)
    end
    pos[b] = row
  end
  return pos
end

local known_options = {"max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id",
                       "use_cache", "return_logprobs", "repetition_penalty", "stop_strings", "tokenizer", "seeds"}

-- The options not given, from the model's generation_config.json when it
-- has one (as Hugging Face's generate reads it), else lualign's defaults.
local function with_defaults(model, opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  local gc = rawget(model, "generation_config")
  if gc then
    if o.eos_id == nil then o.eos_id = gc.eos_token_id end
    if o.pad_id == nil then o.pad_id = gc.pad_token_id end
    if o.temperature == nil then o.temperature = gc.do_sample and (gc.temperature or 1.0) or 0 end
    if o.top_k == nil then o.top_k = gc.top_k or 50 end
    if o.top_p == nil then o.top_p = gc.top_p end
    if o.repetition_penalty == nil then o.repetition_penalty = gc.repetition_penalty end
  end
  return o
end

-- A set of EOS ids from a number, a list of numbers or nil; and the first.
local function eos_set(eos)
  local set, first = {}, nil
  if type(eos) == "number" then eos = {eos} end
  if eos ~= nil and type(eos) ~= "table" then
    util.error("generate: eos_id must be an id or a list of ids (got " .. type(eos) .. ")")
  end
  for _, id in ipairs(eos or {}) do
    local i = math.tointeger(id)
    if not i then util.error("generate: eos_id holds " .. tostring(id) .. ", not an integer id") end
    set[i] = true
    first = first or i
  end
  return set, first
end

-- Hugging Face's repetition penalty, in place on logits (B, V): for every
-- id seen in a row, a positive logit is divided by the penalty and a
-- negative one multiplied by it.
local function penalise(logits, seen, penalty)
  local previous = core.set_grad_enabled(false)
  for b, ids in ipairs(seen) do
    local row = logits[b]
    for id in pairs(ids) do
      local x = row[id + 1]
      row[id + 1] = x > 0 and x / penalty or x * penalty
    end
  end
  core.set_grad_enabled(previous)
end

-- Whether the text of a row's new tokens contains a stop string that ends
-- within its last token (so a stop string is matched once, when completed).
local function hits_stop(tokenizer, tokens, stops)
  local text = tokenizer:decode(tokens)
  local before = #tokens > 1 and #tokenizer:decode({table.unpack(tokens, 1, #tokens - 1)}) or 0
  for _, s in ipairs(stops) do
    local from = math.max(1, before - #s + 2)
    if text:find(s, from, true) then return true end
  end
  return false
end

-- The prompts and what was generated as one batch of left-padded rows of
-- P + N tokens: ids, attention_mask (0 on padding and after a row's end),
-- position_ids (counting real tokens, as generation did), response_mask (B, N)
-- (1 on the tokens a row generated, EOS included), and for sequence log-probs
-- of the responses targets (ids shifted left by one) with target_mask (1 where
-- the target is a generated token).  The hidden states that predict the
-- response tokens are columns P .. P + N - 1.
local function prompt_response(prompt_ids, prompt_mask, tokens, lengths, P, N)
  local ids, mask, response, targets, target_mask = {}, {}, {}, {}, {}
  for b = 1, #prompt_ids do
    local row, m, r = table.move(prompt_ids[b], 1, P, 1, {}), table.move(prompt_mask[b], 1, P, 1, {}), {}
    for t = 1, N do
      row[P + t], r[t] = tokens[b][t], t <= lengths[b] and 1 or 0
      m[P + t] = r[t]
    end
    local tgt, tm = {}, {}
    for t = 1, P + N do
      tgt[t] = row[t + 1] or 0
      tm[t] = (t >= P and t < P + N and r[t - P + 1] == 1) and 1 or 0
    end
    ids[b], mask[b], response[b], targets[b], target_mask[b] = row, m, r, tgt, tm
  end
  return {ids = core.tensor(ids, "int64"), attention_mask = core.tensor(mask, "float32"),
          position_ids = core.tensor(positions_of(mask), "int64"), response_mask = core.tensor(response, "float32"),
          targets = core.tensor(targets, "int64"), target_mask = core.tensor(target_mask, "float32"),
          prompt_length = P, response_length = N}
end

-- One random stream per row from opts.seeds (see above).
local function row_streams(seeds, B)
  if type(seeds) ~= "table" or #seeds ~= B then
    util.error(string.format("generate: seeds must be a list of one seed per row (%d rows; got %s)", B,
      type(seeds) == "table" and (#seeds .. " seeds") or type(seeds)))
  end
  local rng, streams = require("lualign.data.batch").rng, {}
  for b, s in ipairs(seeds) do
    local ok, stream = pcall(rng, table.unpack(type(s) == "table" and s or {s}))
    if not ok then util.error("generate: seeds[" .. b .. "]: " .. tostring(stream):gsub("^[^:]*:%d+: ", "")) end
    streams[b] = stream
  end
  return streams
end

local function generate(model, prompts, opts)
  opts = with_defaults(model, util.check_options("generate", opts, known_options))
  local max_new = opts.max_new_tokens or 32
  local temperature = opts.temperature or 1.0
  local eos_ids, first_eos = eos_set(opts.eos_id)
  local pad = opts.pad_id or first_eos or 0
  local use_cache = opts.use_cache ~= false
  local penalty = opts.repetition_penalty or 1.0
  if type(penalty) ~= "number" or not (penalty > 0) then
    util.error("generate: repetition_penalty must be a positive number (got " .. tostring(penalty) .. ")")
  end
  local stops = opts.stop_strings
  if stops ~= nil then
    if type(stops) == "string" then stops = {stops} end
    if type(stops) ~= "table" or #stops == 0 then util.error("generate: stop_strings must be a list of strings") end
    for _, s in ipairs(stops) do
      if type(s) ~= "string" or s == "" then util.error("generate: stop_strings must hold non-empty strings") end
    end
    if not opts.tokenizer then util.error("generate: stop_strings need opts.tokenizer to turn tokens into text") end
  end
  local ids, mask, B, P = left_pad(prompts, pad)
  local n_positions = model:max_positions()
  if P + max_new > n_positions then
    util.error(string.format("generate: prompt (%d) + max_new_tokens (%d) exceeds the model's %d positions",
      P, max_new, n_positions))
  end
  local sample_opts = {temperature = temperature, top_k = opts.top_k or 0, top_p = opts.top_p or 1.0}
  local streams = opts.seeds and row_streams(opts.seeds, B)
  -- The ids each row holds so far, for the repetition penalty (padding excluded).
  local seen = {}
  if penalty ~= 1 then
    for b = 1, B do
      seen[b] = {}
      for t = 1, P do if mask[b][t] == 1 then seen[b][ids[b][t]] = true end end
    end
  end
  local _ <close> = require("lualign").no_grad()
  local was_training = model.training
  model:eval()
  local _restore <close> = setmetatable({}, {__close = function() model:train(was_training) end})

  -- The full key mask: prompt padding is 0, generated positions 1.
  local full_mask = {}
  for b = 1, B do
    local row = {}
    for t = 1, P + max_new do row[t] = t <= P and mask[b][t] or 1 end
    full_mask[b] = row
  end
  local key_mask = core.tensor(full_mask, "float32")
  local pos = positions_of(mask)
  local next_pos = {}
  for b = 1, B do next_pos[b] = pos[b][P] + 1 end

  local seq_ids = core.tensor(ids, "int64")
  local cache = use_cache and model:new_cache(B, P + max_new) or nil
  local function last_logits(step_ids, step_pos, length)
    local h = model:hidden(step_ids, {attention_mask = key_mask:narrow(2, 1, length),
                                      position_ids = step_pos, cache = cache})
    return model:logits(h:select(2, -1))
  end

  local tokens, logprobs, lengths, finished, sequences = {}, {}, {}, {}, {}
  for b = 1, B do tokens[b], logprobs[b], lengths[b], finished[b], sequences[b] = {}, {}, 0, false, {} end
  local logits = last_logits(seq_ids, core.tensor(pos, "int64"), P)
  local n_done = 0
  for step = 1, max_new do
    if penalty ~= 1 then
      logits = logits:contiguous()
      penalise(logits, seen, penalty)
    end
    if streams then
      local u = {}
      for b = 1, B do u[b] = streams[b]:float() end
      sample_opts.uniforms = u
    end
    local next_ids, lp = core.nn.sample(logits, sample_opts)
    local chosen, chosen_lp = next_ids:totable(), lp:totable()
    for b = 1, B do
      if finished[b] then
        chosen[b], chosen_lp[b] = pad, 0.0
      else
        lengths[b] = lengths[b] + 1
        sequences[b][#sequences[b] + 1] = chosen[b]
        if penalty ~= 1 then seen[b][chosen[b]] = true end
        if eos_ids[chosen[b]] or (stops and hits_stop(opts.tokenizer, sequences[b], stops)) then
          finished[b] = true
          n_done = n_done + 1
        end
      end
      tokens[b][step], logprobs[b][step] = chosen[b], chosen_lp[b]
    end
    if n_done == B or step == max_new then break end
    local column = {}
    for b = 1, B do column[b] = {chosen[b]} end
    local step_pos = {}
    for b = 1, B do step_pos[b] = {next_pos[b]}; next_pos[b] = next_pos[b] + 1 end
    if use_cache then
      logits = last_logits(core.tensor(column, "int64"), core.tensor(step_pos, "int64"), P + step)
    else
      for b = 1, B do ids[b][#ids[b] + 1] = chosen[b]; pos[b][#pos[b] + 1] = step_pos[b][1] end
      logits = last_logits(core.tensor(ids, "int64"), core.tensor(pos, "int64"), P + step)
    end
  end
  local out = {
    tokens = core.tensor(tokens, "int64"),
    lengths = lengths, finished = finished, sequences = sequences,
    prompt_length = P,
    batch = prompt_response(ids, mask, tokens, lengths, P, #tokens[1]),
  }
  if opts.return_logprobs then out.logprobs = core.tensor(logprobs, "float32") end
  return out
end

return generate
